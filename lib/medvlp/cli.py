"""The ``medvlp`` command line (also ``python -m medvlp``).

    medvlp synth data/                      write the deterministic synthetic corpus
    medvlp verify-data data/ data.dvc       check data/ against the hash recorded by DVC
    medvlp get-data                         make data/ match data.dvc: dvc pull, else regenerate (`make data`)
    medvlp curate --params params.yaml      run the curation stage without a notebook
    medvlp pretrain-text --params params.yaml   run the text-encoder stage without a notebook
    medvlp ingest DATASET SRC DST [...]     convert a public dataset into data/ (medvlp.data.ingest)
    medvlp notebook SRC OUT --section S     run a stage notebook with its params.yaml section
    medvlp score-ct-rate --model M --ingested DIR --style fvlm|normal --out DIR
                                            CT-RATE's zero-shot protocol (per scan) on an ingested corpus
    medvlp update-readme                    regenerate README.md's results from reports/metrics
    medvlp size paper -o params.yaml        params.yaml with the paper-sized parameters (GPU runs) merged in
    medvlp strip-notebooks notebooks/*.ipynb
    medvlp convert-fvlm SRC DST [--config NAME]   official fVLM checkpoint -> medvlp model file
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


def _run_section(fn, params_file: Path, section: str):
    """``fn(**<section of params_file>)``; a key missing from the section exits naming the file, keys and
    section (every parameter is set in the params file: the stage functions have no defaults)."""
    from medvlp.params import load_params, stage_params
    from medvlp.stage_args import MissingParamsError

    try:
        return fn(**stage_params(load_params(params_file), section))
    except MissingParamsError as err:
        raise SystemExit(f"{params_file}: {err}") from err


def _cmd_get_data(args: argparse.Namespace) -> int:
    from medvlp.data.fetch import DataError, get_data

    try:
        get_data(args.root, args.data, args.dvc_file)
    except DataError as e:
        print(f"make data: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from medvlp.curate.pipeline import run_curation

    report = _run_section(run_curation, args.params, "curate")
    print(json.dumps({k: report[k] for k in ("extraction", "anatomy_assignment") if k in report}, indent=2))
    return 0


def _cmd_pretrain_text(args: argparse.Namespace) -> int:
    from medvlp.train.text_encoder import pretrain_text_encoder

    metrics = _run_section(pretrain_text_encoder, args.params, "pretrain_text")
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_notebook(args: argparse.Namespace) -> int:
    from medvlp.notebooks import run_notebook, stage_notebook_params
    from medvlp.params import load_params

    everything = load_params(args.params)
    for name in args.extra:
        if name not in everything:
            raise SystemExit(f"--extra {name}: params file {args.params} has no section {name!r}")
    run_notebook(args.source, args.output, stage_notebook_params(everything, args.section, args.item, args.extra))
    return 0


def _cmd_score_ct_rate(args: argparse.Namespace) -> int:
    from medvlp.eval.ct_rate import score_ct_rate
    from medvlp.models import load_model

    model = load_model(args.model, map_location=args.device)
    description = args.description or f"{args.model} ({model.config.get('kind')})"
    result = score_ct_rate(model, args.ingested, split=args.split, prompt_style=args.style, n_boot=args.n_boot,
                           seed=args.seed, out_dir=args.out, description=description,
                           intact_min_fraction=args.intact_min_fraction, spatial_size=args.spatial_size,
                           slice_stride=args.slice_stride)
    macro = result.report["macro"]
    print(json.dumps({"macro_auc": macro["auc"], "ci": macro["ci"], "n_scans": result.report["n_scans"],
                      "excluded_pairs": result.report["excluded_pairs"],
                      "files": [str(p) for p in result.paths]}, indent=2))
    return 0


def _cmd_update_readme(args: argparse.Namespace) -> int:
    from medvlp.readme_results import update_readme

    changed = update_readme(args.readme, args.metrics)
    print(f"{args.readme}: {'updated' if changed else 'already current'}")
    return 0


def _cmd_size(args: argparse.Namespace) -> int:
    import yaml

    from medvlp.params import apply_size, load_params

    merged = yaml.safe_dump(apply_size(args.name, load_params(args.base)), sort_keys=False)
    if args.out is None:
        print(merged, end="")
    else:
        args.out.write_text(merged, "utf-8")
        print(f"{args.out}: {args.base} with the {args.name!r} size merged in")
    return 0


def _cmd_strip(args: argparse.Namespace) -> int:
    from medvlp.notebooks import strip_outputs

    for nb in args.notebooks:
        if strip_outputs(nb):
            print(f"stripped {nb}")
    return 0


def _cmd_convert_fvlm(args: argparse.Namespace) -> int:
    from medvlp.models.checkpoint import save_model
    from medvlp.models.fvlm_convert import load_fvlm_checkpoint

    config = args.config
    if config.endswith(".json"):
        config = json.loads(Path(config).read_text("utf-8"))
    overrides = {}
    if args.text_model is not None:
        from medvlp.models.configs import get_clip_config

        text_cfg = {**get_clip_config("fvlm-official")["text_cfg"], "hf_model_name": str(args.text_model)}
        overrides["clip_model"] = {"base": "fvlm-official", "text_cfg": text_cfg}
    try:
        model = load_fvlm_checkpoint(args.src, config, **overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"convert-fvlm: {err}", file=sys.stderr)
        return 1
    save_model(model, args.dst, {"converted_from": str(args.src), "converter": "medvlp.models.fvlm_convert"})
    print(f"{args.dst}: medvlp {model.config['kind']} model from official fVLM {args.src}")
    return 0


def _cmd_plots(args: argparse.Namespace) -> int:
    from medvlp.dvc_plots import main

    return main(args)


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

    p = sub.add_parser("get-data", help="make data/ match data.dvc (dvc pull, else regenerate the synthetic corpus "
                       "if data.dvc records it); never deletes data/")
    p.add_argument("data", nargs="?", default="data")
    p.add_argument("dvc_file", nargs="?", default="data.dvc")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: the current folder)")
    p.set_defaults(func=_cmd_get_data)

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

    from medvlp.notebooks import add_notebook_arguments

    p = add_notebook_arguments(sub.add_parser("notebook", help="execute a stage notebook with papermill"))
    p.set_defaults(func=_cmd_notebook)

    p = sub.add_parser("score-ct-rate", help="CT-RATE's zero-shot protocol (18 labels, per scan, bootstrap CIs) on "
                       "an ingested corpus (medvlp.eval.ct_rate)")
    p.add_argument("--model", type=Path, required=True, help="a medvlp model file (save_model), e.g. "
                   "reports/pretrain/fvlm-s0/best.pt")
    p.add_argument("--ingested", type=Path, required=True, help="`medvlp ingest ct_rate`'s destination (or its ct/)")
    p.add_argument("--style", choices=("fvlm", "normal"), required=True,
                   help="fvlm: fVLM's prompt pairs ('Emphysema.' / 'Not Emphysema.'); normal: the negative is the "
                        "anatomy's normal text")
    p.add_argument("--out", type=Path, required=True, help="folder for ct_rate_<style>.json and _scores.parquet")
    p.add_argument("--split", default="valid", help="volume id prefix (default: valid, the papers' benchmark)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per 95%% CI (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--intact-min-fraction", type=float, default=None,
                   help="score a label only where its anatomy is intact in the crop with this fraction of its "
                        "voxels, as the zero_shot stage does (default: none, every anatomy with voxels)")
    p.add_argument("--spatial-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="model input size (default: the volume tower's; RadCLIP needs it)")
    p.add_argument("--slice-stride", type=int, default=1, help="RadCLIP: every n-th axial slice (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device of the model (default: cpu)")
    p.add_argument("--description", default=None, help="the model's name in the report (default: file and kind)")
    p.set_defaults(func=_cmd_score_ct_rate)

    p = sub.add_parser("update-readme", help="regenerate README.md's results block from reports/metrics")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics"))
    p.set_defaults(func=_cmd_update_readme)

    p = sub.add_parser("size", help="write params.yaml with a size merged in (paper: paper-sized GPU runs)")
    p.add_argument("name", help="size name, e.g. paper (lib/medvlp/sizes/<name>.yaml)")
    p.add_argument("--base", type=Path, default=Path("params.yaml"))
    p.add_argument("-o", "--out", type=Path, default=None, help="output file (default: print)")
    p.set_defaults(func=_cmd_size)

    p = sub.add_parser("strip-notebooks", help="remove outputs from source notebooks")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.set_defaults(func=_cmd_strip)

    p = sub.add_parser("convert-fvlm", help="convert the official fVLM checkpoint into a medvlp model file")
    p.add_argument("src", type=Path, help="official checkpoint (BlipPretrain state dict, possibly under 'model')")
    p.add_argument("dst", type=Path, help="medvlp model file to write (load with medvlp.models.load_model)")
    p.add_argument("--config", default="fvlm_official", help="model preset name or a .json model config "
                   "(default: fvlm_official)")
    p.add_argument("--text-model", type=Path, default=None, help="local BERT folder for the fvlm-official text "
                   "tower (default: microsoft/BiomedVLP-CXR-BERT-specialized from the Hugging Face cache)")
    p.set_defaults(func=_cmd_convert_fvlm)

    p = sub.add_parser("plots", help="dvc plots show (or diff) to offline HTML; check in headless Chromium that "
                                     "every declared plot drew")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--out", type=Path, default=Path("dvc_plots"), help="folder for index.html")
    p.add_argument("--screenshot", type=Path, default=None, help="PNG of the rendered page")
    p.add_argument("--diff", nargs="*", default=None, metavar="REV",
                   help="dvc plots diff these revisions (none: workspace against HEAD) instead of show")
    p.set_defaults(func=_cmd_plots)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
