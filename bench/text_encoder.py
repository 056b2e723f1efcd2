"""How well the ``pretrain_text`` encoder tells the findings apart from text alone, before any image training.

    .venv/bin/python bench/text_encoder.py [--set concept_steps=0 ...] [--split val]

Trains the text encoder as the ``pretrain_text`` stage does (its ``params.yaml`` section, with ``--set``
overrides) into a temporary folder, builds ``conceptclip`` around it (the image tower is not used), and scores
every figure of ``--split`` by its own caption: the findings macro AUROC "from the captions" of the
``zero_shot`` stage (prompt ensembles, softmax over the modality's findings). The named baseline, measured in
the same run on the same captions and prompts, is a bag of words: TF-IDF vectors (unigrams and bigrams, fitted
on the train captions) compared by cosine. Printed: both AUROCs, their ratio above chance, and the time.
Needs ``dvc repro curate`` (the curated manifests and shards). Never run it on the test split to choose settings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from medvlp.eval.data import load_figures
from medvlp.eval.encode import ImageFeatures, encode_texts
from medvlp.eval.evaluate import finding_pairs
from medvlp.eval.metrics import auroc_table
from medvlp.eval.prompts import finding_prompts
from medvlp.eval.zero_shot import finding_scores
from medvlp.lexicon import load_concept_lexicon
from medvlp.models import build_model
from medvlp.params import load_params, stage_params
from medvlp.train.__main__ import apply_override
from medvlp.train.text_encoder import pretrain_text_encoder


def tfidf_scores(train_captions, figures, lexicon) -> np.ndarray:
    """``[N, C]`` cosine of each caption's TF-IDF vector with the mean vector of each finding's prompts."""
    vec = TfidfVectorizer(ngram_range=(1, 2)).fit(train_captions)
    captions = vec.transform(figures.captions)
    by_id = {m.id: m for m in lexicon.modalities}
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    mods = np.asarray(figures.modalities)
    out = np.full(figures.labels.shape, np.nan)
    for mod in sorted(set(figures.modalities)):
        classes = lexicon.for_modality(mod)
        rows = np.flatnonzero(mods == mod)
        if not classes:
            continue
        prompts = np.vstack([np.asarray(vec.transform([p.text for p in finding_prompts(c, by_id.get(mod))]).mean(0))
                             for c in classes])
        out[np.ix_(rows, [column[c.id] for c in classes])] = np.asarray(captions[rows] @ prompts.T)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pretrain_text key")
    parser.add_argument("--split", default="val")
    parser.add_argument("--data", default="data")
    args = parser.parse_args()
    if args.split == "test":
        sys.exit("choose settings on the validation split, never on test (--split val)")
    everything = load_params(args.params)
    params = stage_params(everything, "pretrain_text")
    for assignment in args.set:
        apply_override(params, assignment)
    lexicon = load_concept_lexicon(everything["zero_shot"]["concept_lexicon"])
    truth = Path(args.data) / "figures" / "figures_truth.jsonl"
    figures = load_figures(params["curated_dir"], args.split, lexicon, truth)
    train = load_figures(params["curated_dir"], "train", lexicon, truth)
    names, valid = [c.id for c in lexicon.concepts], finding_pairs(figures, lexicon)
    macro = lambda scores: auroc_table(figures.labels, scores, names, n_boot=200, valid=valid)["macro"]

    baseline = macro(tfidf_scores(train.captions, figures, lexicon))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        metrics = pretrain_text_encoder(**{**params, "out_dir": folder, "metrics_path": f"{folder}/m.json"},
                                        progress=False)
        seconds = time.perf_counter() - started
        text_cfg = {**everything["pretrain"]["common"]["architecture"]["clip_model"]["text_cfg"],
                    "hf_model_name": folder}
        model = build_model("conceptclip", clip_model={"base": "medvlp-conv-tiny", "text_cfg": text_cfg},
                            text_pool=everything["pretrain"]["common"]["architecture"]["text_pool"])
        feats = ImageFeatures(encode_texts(model, figures.captions), None)
        ours = macro(finding_scores(model, feats, figures.modalities, lexicon, local_weight=0.0, top_k=1))
    ratio = (ours["auc"] - 0.5) / (baseline["auc"] - 0.5)
    print(f"{args.split} split, {int(valid.any(1).sum())} figures; settings {args.set or 'of params.yaml'}")
    print("| text side | findings macro AUROC from the captions | above chance vs TF-IDF | train (s) |")
    print("|---|---|---:|---:|")
    print(f"| TF-IDF bag of words (baseline) | {baseline['auc']:.3f} [{baseline['ci_low']:.3f}, "
          f"{baseline['ci_high']:.3f}] | 1.00x | - |")
    print(f"| pretrain_text encoder ({metrics['steps']} MLM + {metrics['concept_steps']} concept steps) | "
          f"{ours['auc']:.3f} [{ours['ci_low']:.3f}, {ours['ci_high']:.3f}] | {ratio:.2f}x | {seconds:.0f} |")


if __name__ == "__main__":
    main()
