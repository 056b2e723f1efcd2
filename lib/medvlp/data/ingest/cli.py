"""``python -m medvlp.data.ingest <dataset> <src> <dst> [options]`` (also ``medvlp ingest ...``).

    medconcept META.jsonl DST --images DIR [--threshold 0.8] [--write-lexicon PATH]   -> DST/figures/
    roco       ROCO_DIR DST                                                          -> DST/figures/
    ct_rate    CT_RATE_DATASET DST --segmentations DIR [--split train] [--volumes-fixed] -> DST/ct/
    dicom      DICOM_TREE OUT_DIR                                                    -> OUT_DIR/<series>.nii.gz
    totalseg   TOTALSEG_OUTPUT OUT_DIR [--mapping PATH]                              -> OUT_DIR/<name>.nii.gz

Every dataset: ``--strict`` (fail at the first bad record, naming file and line), ``--overwrite`` (replace
a non-empty output folder), ``--max-examples N``, ``--quiet`` (no progress bar). The summary (counts by
reason) is printed and written as ``ingest_report.json`` next to the output. Exit status 1 when the
source cannot be ingested (or, with ``--strict``, has a bad record).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "configure_parser", "main", "run"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="fail at the first bad record, naming file and line")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--max-examples", type=int, default=5, help="messages kept per reason in the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _figures_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images-mode", choices=("copy", "symlink", "hardlink"), default="copy",
                   help="how images get into DST/figures/images (default: copy). Curation reads a symlink only "
                        "if it resolves inside the corpus or its repository's DVC cache (else "
                        "path_escapes_corpus): to curate, copy or hardlink (same file system)")
    p.add_argument("--no-image-check", action="store_true",
                   help="only check that images exist (curation decodes them later)")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one subcommand per dataset to ``parser`` (its name lands in ``ingest_dataset``)."""
    sub = parser.add_subparsers(dest="ingest_dataset", required=True, metavar="dataset")

    p = sub.add_parser("medconcept", help="MedConcept-23M metadata JSONL + images -> DST/figures/")
    p.add_argument("src", type=Path, help="the metadata JSON Lines file")
    p.add_argument("dst", type=Path, help="the corpus folder (data/)")
    p.add_argument("--images", type=Path, default=None, help="image folder (default: the metadata's folder)")
    p.add_argument("--threshold", type=float, default=0.8, help="least umls_similarity of a kept span")
    p.add_argument("--span-window", type=int, default=50,
                   help="characters either side of a span's given start searched for its tokens (default 50)")
    p.add_argument("--concept-lexicon", type=Path, default=None, help="lexicon mapping CUIs to concept ids")
    p.add_argument("--write-lexicon", type=Path, default=None,
                   help="also write a concept lexicon of every kept CUI (for curate.concept_lexicon)")
    _figures_options(p)
    _common(p)

    p = sub.add_parser("roco", help="ROCO split folders (captions, cuis, dlinks, images/) -> DST/figures/")
    p.add_argument("src", type=Path, help="roco-dataset folder, its data/ folder or one data/<split>/<part>")
    p.add_argument("dst", type=Path, help="the corpus folder (data/)")
    _figures_options(p)
    _common(p)

    p = sub.add_parser("ct_rate", help="CT-RATE volumes + reports + metadata + labels -> DST/ct/")
    p.add_argument("src", type=Path, help="CT-RATE's dataset folder")
    p.add_argument("dst", type=Path, help="the corpus folder (data/)")
    p.add_argument("--segmentations", type=Path, required=True, help="folder of TotalSegmentator outputs")
    p.add_argument("--split", action="append", choices=("train", "valid"), default=None,
                   help="split to read (repeatable; default: train and valid, those present)")
    p.add_argument("--reports", type=Path, default=None, help="reports CSV (one split)")
    p.add_argument("--metadata", type=Path, default=None, help="metadata CSV (one split)")
    p.add_argument("--labels", type=Path, default=None, help="multi-abnormality labels CSV (one split)")
    p.add_argument("--volumes", type=Path, default=None, help="volumes folder (one split)")
    p.add_argument("--volumes-fixed", action="store_true",
                   help="volumes are the corrected *_fixed release: no rescale, keep their affine")
    p.add_argument("--totalseg-mapping", type=Path, default=None, help="TotalSegmentator class -> anatomy file")
    p.add_argument("--anatomy-lexicon", type=Path, default=None, help="base anatomy lexicon JSON")
    p.add_argument("--limit", type=int, default=None, help="read at most N report rows per split")
    _common(p)

    p = sub.add_parser("dicom", help="a tree of DICOM series -> NIfTI volumes in HU (canonical RAS)")
    p.add_argument("src", type=Path, help="a series folder or a tree of them")
    p.add_argument("dst", type=Path, help="output folder")
    _common(p)

    p = sub.add_parser("totalseg", help="TotalSegmentator outputs -> anatomy label maps")
    p.add_argument("src", type=Path, help="a multilabel NIfTI, a folder of class masks, or a folder of either")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--mapping", type=Path, default=None, help="TotalSegmentator class -> anatomy file")
    p.add_argument("--anatomy-lexicon", type=Path, default=None, help="anatomy lexicon JSON")
    _common(p)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medvlp.data.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(parser)


def _dispatch(args: argparse.Namespace):
    common = {"overwrite": args.overwrite, "strict": args.strict, "max_examples": args.max_examples,
              "progress": not args.quiet}
    dataset = args.ingest_dataset
    if dataset == "medconcept":
        from medvlp.data.ingest.medconcept import ingest_medconcept

        return ingest_medconcept(args.src, args.dst, images=args.images, similarity_threshold=args.threshold,
                                 span_window=args.span_window, concept_lexicon=args.concept_lexicon,
                                 write_lexicon=args.write_lexicon,
                                 images_mode=args.images_mode, check_images=not args.no_image_check, **common)
    if dataset == "roco":
        from medvlp.data.ingest.roco import ingest_roco

        return ingest_roco(args.src, args.dst, images_mode=args.images_mode, check_images=not args.no_image_check,
                           **common)
    if dataset == "ct_rate":
        from medvlp.data.ingest.ct_rate import ingest_ct_rate

        return ingest_ct_rate(args.src, args.dst, segmentations=args.segmentations,
                              splits=tuple(args.split) if args.split else None, reports=args.reports,
                              metadata=args.metadata, labels=args.labels, volumes=args.volumes,
                              volumes_fixed=args.volumes_fixed, totalseg_mapping=args.totalseg_mapping,
                              anatomy_lexicon=args.anatomy_lexicon, limit=args.limit, **common)
    if dataset == "dicom":
        from medvlp.data.ingest.dicom_series import convert_dicom_tree

        return convert_dicom_tree(args.src, args.dst, **common)
    from medvlp.data.ingest.totalseg import convert_totalseg

    return convert_totalseg(args.src, args.dst, mapping=args.mapping, anatomy_lexicon=args.anatomy_lexicon, **common)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; print the summary. Returns the exit status."""
    from medvlp.data.ingest.skip_log import IngestError

    try:
        summary = _dispatch(args)
    except (IngestError, FileNotFoundError, ValueError) as e:
        print(f"medvlp ingest {args.ingest_dataset}: {e}", file=sys.stderr)
        return 1
    print(summary.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
