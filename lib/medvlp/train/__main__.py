"""``python -m medvlp.train --params params.yaml --model NAME`` (also under ``torchrun``).

Reads ``params.yaml``'s ``pretrain`` section (``common`` merged with ``models.NAME``) and trains that
model. ``--set key=value`` overrides one flat key (YAML value syntax; dotted keys reach into the
nested blocks, e.g. ``--set optimizer.lr=1e-4``; ``1e-4`` is a float).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medvlp.params import load_yaml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medvlp.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file")
    parser.add_argument("--section", default="pretrain", help="params.yaml section (default: pretrain)")
    parser.add_argument("--model", required=True, help="entry under <section>.models")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the params' out_dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def apply_override(params: dict, assignment: str) -> None:
    """``a.b=value`` -> ``params["a"]["b"] = value`` parsed as YAML (``3e-4`` is a float)."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE")
    key, value = assignment.split("=", 1)
    target = params
    *parents, last = key.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[last] = load_yaml(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medvlp.params import load_params, stage_params
    from medvlp.stage_args import MissingParamsError
    from medvlp.train.loop import train

    params = stage_params(load_params(args.params), args.section, args.model)
    for assignment in args.set:
        apply_override(params, assignment)
    try:
        result = train(params, out_dir=args.out_dir, progress=not args.no_progress)
    except MissingParamsError as err:
        raise SystemExit(f"{args.params}: {err}") from err
    if result.final_losses and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"model": args.model, "steps": result.steps, "final_losses": result.final_losses,
                          "final_val": result.final_val, "last": str(result.last_checkpoint)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
