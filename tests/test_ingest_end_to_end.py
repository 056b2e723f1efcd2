"""Public-dataset formats all the way through: ingest -> curation -> a tiny pre-training run -> zero-shot.

CT-RATE-format fixture -> ``ingest ct_rate`` -> ``run_curation`` (with the written CT-RATE anatomy lexicon)
-> fVLM; MedConcept-23M-format fixture -> ``ingest medconcept --write-lexicon`` -> ``run_curation`` (with
the written concept lexicon) -> ConceptCLIP (IT-Align, then IT-Align + PC-Align on the given spans).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_ingest_fixtures import ct_rate_corpus, medconcept_corpus
from test_train_fixtures import tiny_params

from medvlp.cli import main as medvlp_main
from medvlp.curate import run_curation
from medvlp.data.ingest import ingest_medconcept
from medvlp.eval.stage import run_zero_shot
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.params import load_params, stage_params
from medvlp.readme_results import zero_shot_markdown
from medvlp.train import train
from medvlp.train.runlog import read_csv

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPLIT = {"train": 0.7, "val": 0.3, "test": 0.0}


def _zero_shot_params(**overrides) -> dict:
    """The pipeline's zero_shot parameters (params.yaml) with ``overrides``; the stage takes every one."""
    params = {**stage_params(load_params(REPO / "params.yaml"), "zero_shot"), **overrides}
    params.pop("figures_dir")  # the notebook's, not the stage function's
    return params


def _curate(data, out, tmp_path, split=SPLIT, **lexicons) -> dict:
    """The curate stage with params.yaml's ``curate`` section, on ``data`` into ``out``, in small shards."""
    params = {**stage_params(load_params(REPO / "params.yaml"), "curate"), "data_dir": str(data), "out_dir": str(out),
              "metrics_path": str(tmp_path / "curation.json"), "figures_dir": str(tmp_path / "figs"),
              "split": split, "shard_max_samples": 4, **lexicons}
    return run_curation(**params, progress=False)


def _assert_finite_run(result, n_steps: int, terms: list[str]) -> None:
    rows = read_csv(result.train_log)
    assert [int(r["step"]) for r in rows] == list(range(1, n_steps + 1))
    for r in rows:
        assert math.isfinite(float(r["loss"]))
    for term in terms:
        assert any(r[term] != "" and math.isfinite(float(r[term])) for r in rows), term
    assert result.last_checkpoint.is_file() and result.run_info.is_file()
    assert all(math.isfinite(v) for v in result.final_losses.values())


def test_ct_rate_ingest_curate_pretrain_fvlm(tmp_path):
    dataset, segs = ct_rate_corpus(tmp_path / "src", n_patients=8)
    data = tmp_path / "data"
    # The command line, as a team would run it (medvlp ingest = python -m medvlp.data.ingest).
    assert medvlp_main(["ingest", "ct_rate", str(dataset), str(data), "--segmentations", str(segs), "--quiet"]) == 0
    report = json.loads((data / "ct" / "ingest_report.json").read_text())
    assert (report["read"], report["written"], report["skipped"]) == (10, 10, 0)

    lexicon = data / "ct" / "anatomy_ct_rate.json"
    curated = tmp_path / "curated"
    rep = _curate(data, curated, tmp_path, split={"train": 0.6, "val": 0.0, "test": 0.4}, anatomy_lexicon=lexicon)
    ct = rep["ct"]
    assert ct["present"] and (ct["records_read"], ct["rejected"], ct["kept"]) == (10, 0, 10)
    assert not rep["figures"]["present"]
    # Truth from CT-RATE's labels: scored over the 4 labelled anatomies of each study.
    assert ct["truth"]["records_scored"] == 10 and ct["truth"]["n_normal_scored"] == 40
    assert ct["truth"]["n_sentences"] == 0                      # CT-RATE has no sentence-level truth
    table = pd.read_parquet(curated / "ct.parquet")
    assert sorted(table["patient_id"].unique()) == [f"train_{p}" for p in range(1, 9)]
    assert all(list(s) == [24, 20, 12] for s in table["shape"])
    heart = [next(t["text"] for t in row if t["anatomy"] == "heart") for row in table["anatomy_text"]]
    assert any("Cardiomegaly" in t for t in heart)
    assert len(table["anatomy_text"][0]) == len(load_anatomy_lexicon().anatomies)

    result = train(tiny_params("fvlm", curated, steps=2), out_dir=tmp_path / "pretrain" / "fvlm-s0", progress=False)
    _assert_finite_run(result, 2, ["anatomy_align"])
    # zero-shot diagnosis with CT-RATE's labels as truth and its lexicon's abnormalities as prompts; the same
    # weights given again as a released model file are scored by the same code, to the same numbers
    released = tmp_path / "external_weights" / "fvlm_released.pt"
    released.parent.mkdir()
    shutil.copy(result.best_checkpoint, released)
    zs = run_zero_shot(**_zero_shot_params(
        curated_dir=str(curated), data_dir=str(data), pretrain_dir=str(tmp_path / "pretrain"), figure_models=[],
        ct_models=["fvlm"], seeds={"fvlm": [0]}, split="test", n_boot=20, anatomy_lexicon=str(lexicon),
        external_models={"fvlm_released": {"medvlp_model": str(released)}},
        metrics_path=str(tmp_path / "zero_shot.json"), scores_dir=str(tmp_path / "scores")), progress=False)
    fvlm, ext = zs["ct"]["fvlm"], zs["ct"]["fvlm_released"]
    assert ext["external"]["sha256"] == hashlib.sha256(released.read_bytes()).hexdigest()
    assert ext["external"]["kind"] == "medvlp_model" and ext["seed_results"] == {}
    drop = ("external", "seed_results")
    assert {k: v for k, v in ext.items() if k not in drop} == {k: v for k, v in fvlm.items() if k not in drop}
    assert "fvlm_released" not in zs["seeds"] and all("fvlm_released" not in c.values() for c in zs["claims"])
    scores = {m: pd.read_parquet(tmp_path / "scores" / f"{m}.parquet").drop(columns="seed")
              for m in ("fvlm", "fvlm_released")}
    assert len(scores["fvlm"]) > 0 and scores["fvlm_released"].equals(scores["fvlm"])
    assert f"| fvlm_released (released: {released}, sha256 {ext['external']['sha256'][:12]}) |" in \
        zero_shot_markdown(zs)
    n_test = int((table["split"] == "test").sum())
    assert fvlm["n_studies"] == n_test > 0
    abnormalities = {a.id for a in load_anatomy_lexicon(str(lexicon)).abnormalities}
    assert set(fvlm["per_disease"]) | set(fvlm["skipped"]) == abnormalities
    assert all(0.0 <= v["auc"] <= 1.0 for v in fvlm["per_disease"].values())
    assert json.loads((tmp_path / "zero_shot.json").read_text())["ct"]["fvlm"]["n_studies"] == n_test


def test_medconcept_ingest_curate_pretrain_conceptclip(tmp_path):
    meta, images = medconcept_corpus(tmp_path / "src", n=20)
    data, lexicon = tmp_path / "data", tmp_path / "medconcept_concepts.json"
    summary = ingest_medconcept(meta, data, images=images, write_lexicon=lexicon, progress=False)
    assert (summary.read, summary.written, summary.skipped) == (20, 20, 0)
    assert summary.details["spans_kept"] == 40                # 2 per caption; the 0.55 span is below 0.8

    curated = tmp_path / "curated"
    rep = _curate(data, curated, tmp_path, concept_lexicon=lexicon)
    fig = rep["figures"]
    assert (fig["records_read"], fig["rejected"], fig["kept"]) == (20, 0, 20)
    # Every written span resolves under the written lexicon: no given span is dropped by curation.
    assert fig["given_spans"]["given_mentions"] == 40 and fig["given_spans"]["invalid_given_spans"] == 0
    table = pd.read_parquet(curated / "figures.parquet")
    first = table.iloc[0]
    assert first["article_id"] == "PMC5000000"
    given = [c for c in first["concepts"] if c["source"] == "given"]
    assert [(c["concept_id"], first["caption"][c["start_char"]:c["end_char"]]) for c in given] == \
        [("C0032227", "pleural effusion"), ("C0030705", "patient")]

    run_dir = tmp_path / "pretrain" / "conceptclip-s0"
    result = train(tiny_params("conceptclip", curated, steps=2), out_dir=run_dir, progress=False)
    _assert_finite_run(result, 4, ["it_align", "pc_align"])
    # zero-shot: MedConcept-23M has no finding labels, so retrieval is what can be scored
    zs = run_zero_shot(**_zero_shot_params(
        curated_dir=str(curated), data_dir=str(data), pretrain_dir=str(tmp_path / "pretrain"),
        figure_models=["conceptclip"], ct_models=[], seeds={"conceptclip": [0]}, split="val", n_boot=20,
        concept_lexicon=str(lexicon), metrics_path=str(tmp_path / "zero_shot.json"),
        scores_dir=str(tmp_path / "scores")), progress=False)
    res = zs["figures"]["conceptclip"]
    n_val = int((table["split"] == "val").sum())
    assert res["retrieval"]["image_to_text"]["n_queries"] == n_val > 0
    assert 0.0 <= res["retrieval"]["text_to_image"]["recall@1"]["estimate"] <= 1.0
    assert res["findings"]["per_finding"] == {} and res["linear_probe"] == {}
