"""The ``medvlp`` command line (also ``python -m medvlp``).

    medvlp synth data/                      write the deterministic synthetic corpus
    medvlp verify-data data/ data.dvc       check data/ against the hash recorded by DVC
    medvlp curate --params params.yaml      run the curation stage without a notebook
    medvlp pretrain-text --params params.yaml   run the text-encoder stage without a notebook
    medvlp ingest KIND SRC DST [...]        convert a public dataset into data/ (medvlp.data.ingest)
    medvlp notebook SRC OUT --section S     run a stage notebook with its params.yaml section
    medvlp update-readme                    regenerate README.md's results from reports/metrics
    medvlp recipe paper -o params.yaml      params.yaml with a recipe (paper-sized GPU runs) merged in
    medvlp strip-notebooks notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_synth(args: argparse.Namespace) -> int:
    from medvlp.data.synthetic import generate_corpus

    summary = generate_corpus(args.out, seed=args.seed, n_figures=args.n_figures,
                              n_studies=args.n_studies, progress=not args.quiet)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from medvlp.data.dirhash import dvc_dir_hash, dvc_file_hash

    expected = dvc_file_hash(args.dvc_file)
    actual = dvc_dir_hash(args.data)
    if actual != expected:
        print(f"{args.data}: hash {actual} differs from {expected} recorded in {args.dvc_file}; "
              "the corpus was not regenerated identically (different medvlp, numpy or Pillow version?)",
              file=sys.stderr)
        return 1
    print(f"{args.data}: {actual} matches {args.dvc_file}")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from medvlp.curate.pipeline import run_curation
    from medvlp.params import load_params, stage_params

    report = run_curation(**stage_params(load_params(args.params), "curate"))
    print(json.dumps({k: report[k] for k in ("extraction", "anatomy_assignment") if k in report}, indent=2))
    return 0


def _cmd_pretrain_text(args: argparse.Namespace) -> int:
    from medvlp.params import load_params, stage_params
    from medvlp.train.text_encoder import pretrain_text_encoder

    metrics = pretrain_text_encoder(**stage_params(load_params(args.params), "pretrain_text"))
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_notebook(args: argparse.Namespace) -> int:
    from medvlp.notebooks import run_notebook
    from medvlp.params import load_params, stage_params

    everything = load_params(args.params)
    params = stage_params(everything, args.section, args.item)
    for name in args.extra:
        if name not in everything:
            raise SystemExit(f"--extra {name}: params file {args.params} has no section {name!r}")
        params[name] = everything[name]
    run_notebook(args.source, args.output, params)
    return 0


def _cmd_update_readme(args: argparse.Namespace) -> int:
    from medvlp.readme_results import update_readme

    changed = update_readme(args.readme, args.metrics)
    print(f"{args.readme}: {'updated' if changed else 'already current'}")
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    import yaml

    from medvlp.params import load_params, recipe

    merged = yaml.safe_dump(recipe(args.name, load_params(args.base)), sort_keys=False)
    if args.out is None:
        print(merged, end="")
    else:
        args.out.write_text(merged, "utf-8")
        print(f"{args.out}: {args.base} with recipe {args.name!r}")
    return 0


def _cmd_strip(args: argparse.Namespace) -> int:
    from medvlp.notebooks import strip_outputs

    for nb in args.notebooks:
        if strip_outputs(nb):
            print(f"stripped {nb}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medvlp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from medvlp.data.synthetic import DEFAULT_FIGURES, DEFAULT_SEED, DEFAULT_STUDIES

    p = sub.add_parser("synth", help="write the deterministic synthetic corpus")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--n-figures", type=int, default=DEFAULT_FIGURES)
    p.add_argument("--n-studies", type=int, default=DEFAULT_STUDIES)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("verify-data", help="compare a directory's hash with a .dvc file")
    p.add_argument("data", type=Path, nargs="?", default=Path("data"))
    p.add_argument("dvc_file", type=Path, nargs="?", default=Path("data.dvc"))
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("curate", help="run the curation stage from params.yaml")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(func=_cmd_curate)

    p = sub.add_parser("pretrain-text", help="train the text encoder (the pretrain_text stage) from params.yaml")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(func=_cmd_pretrain_text)

    from medvlp.data.ingest.cli import configure_parser as configure_ingest
    from medvlp.data.ingest.cli import run as run_ingest

    p = configure_ingest(sub.add_parser("ingest", help="convert a public dataset into the source-corpus format"))
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("notebook", help="execute a stage notebook with papermill")
    p.add_argument("source", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--section", required=True, help="params.yaml section (the DVC stage name)")
    p.add_argument("--item", default=None,
                   help="foreach item: the model, or the run <model>-s<seed> of a pretrain@<model>-s<seed> stage")
    p.add_argument("--extra", action="append", default=[], metavar="SECTION",
                   help="also pass another params.yaml section whole, as a parameter of that name (e.g. seeds)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(func=_cmd_notebook)

    p = sub.add_parser("update-readme", help="regenerate README.md's results block from reports/metrics")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics"))
    p.set_defaults(func=_cmd_update_readme)

    p = sub.add_parser("recipe", help="write params.yaml with a recipe merged in (e.g. paper-sized GPU runs)")
    p.add_argument("name", help="recipe name, e.g. paper")
    p.add_argument("--base", type=Path, default=Path("params.yaml"))
    p.add_argument("-o", "--out", type=Path, default=None, help="output file (default: print)")
    p.set_defaults(func=_cmd_recipe)

    p = sub.add_parser("strip-notebooks", help="remove outputs from source notebooks")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.set_defaults(func=_cmd_strip)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
