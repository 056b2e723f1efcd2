"""The DVC pipeline end to end on a tiny synthetic corpus: every stage runs, a second repro reruns nothing."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_project import DVC, run_in

#: The documented top-level keys of zero_shot.json (medvlp.eval.stage) and of one claim (claim_row).
ZERO_SHOT_KEYS = {"split", "n_boot", "seed", "seeds", "figures", "ct", "ablations", "claims", "n_inconclusive",
                  "n_figures", "n_studies"}
CLAIM_KEYS = {"claim", "baseline", "method", "task", "metric", "baseline_value", "method_value", "difference", "ci",
              "se", "p_delong", "mde", "paper_effect", "detectable", "seeds", "n_items", "verdict"}


def _truth_mask_pairs(work: Path) -> int:
    """(test figure, finding) pairs whose truth mask has pixels, counted from the corpus directly."""
    from PIL import Image

    test = set(pd.read_parquet(work / "reports/curated/figures.parquet").query("split == 'test'")["id"])
    n = 0
    for line in (work / "data/figures/figures_truth.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["id"] not in test or not rec.get("mask"):
            continue
        values = set(np.unique(np.asarray(Image.open(work / "data/figures" / rec["mask"]))).tolist())
        n += sum(v in values for v in range(1, len(rec.get("findings") or []) + 1))
    return n


@pytest.mark.slow
def test_dvc_repro_twice_on_tiny_corpus(tiny_project):
    work = tiny_project
    params = yaml.safe_load((work / "params.yaml").read_text())
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path = out if isinstance(out, str) else next(iter(out))
            assert (work / path).exists(), f"stage {name}: output {path} missing"
    for run, item in stages["pretrain"]["foreach"].items():
        run_info = json.loads((work / f"reports/pretrain/{run}/run_info.json").read_text())
        assert run_info["status"] == "finished" and run_info["steps_done"] == 2 * len(
            params["pretrain"]["models"][item["model"]]["stages"]), run
        assert run_info["params"]["seed"] == int(run.rsplit("-s", 1)[1])
        assert (work / f"reports/figures/pretrain/{run}.png").stat().st_size > 0
    zero_shot = json.loads((work / "reports/metrics/zero_shot.json").read_text())
    assert set(zero_shot["figures"]) == set(params["zero_shot"]["figure_models"])
    assert set(zero_shot["ct"]) == set(params["zero_shot"]["ct_models"])
    assert zero_shot["figures"]["conceptclip"]["findings"]["scoring"] == "global+local"
    assert 0.0 <= zero_shot["figures"]["clip"]["findings"]["macro"]["auc"] <= 1.0
    assert {r["model"] for r in zero_shot["ablations"]["anatomy_alignment"]} == {
        "ct_clip_global", "fvlm_nocal", "fvlm_normalcal", "fvlm"}
    assert len(zero_shot["claims"]) == 11 and zero_shot["n_inconclusive"] == sum(
        r["verdict"] == "inconclusive" for r in zero_shot["claims"])
    for model in (*params["zero_shot"]["figure_models"], *params["zero_shot"]["ct_models"]):
        scores = pd.read_parquet(work / f"reports/metrics/scores/{model}.parquet")
        assert sorted(scores["seed"].unique()) == params["seeds"][model], model
    assert (work / "reports/text_encoder/tokenizer.json").is_file()
    assert set(zero_shot) >= ZERO_SHOT_KEYS
    for claim in zero_shot["claims"]:
        assert set(claim) >= CLAIM_KEYS and claim["verdict"] in ("reproduced", "contradicted", "inconclusive")
        assert len(claim["ci"]) == 2 and set(claim["seeds"]) == {claim["baseline"], claim["method"]}
    for name, rows in zero_shot["ablations"].items():
        for row in rows:  # an ablation row is the model's own headline number
            part = "figures" if row["model"] in zero_shot["figures"] else "ct"
            res = zero_shot[part][row["model"]]
            want = res["findings"]["macro"]["auc"] if part == "figures" else res["mean"]["auc"]
            assert row["value"] == want or (math.isnan(row["value"]) and math.isnan(want)), (name, row)
    explain = json.loads((work / "reports/metrics/explain.json").read_text())
    assert set(explain) >= {"split", "n_boot", "localization", "concept_annotation", "bottleneck"}
    assert explain["localization"]["conceptclip"]["n_pairs"] == _truth_mask_pairs(work)
    assert set(explain["localization"]) == {"conceptclip", "clip"}
    assert explain["localization"]["clip"]["n_pairs"] > 0
    assert 0.0 <= explain["localization"]["conceptclip"]["pointing"] <= 1.0
    for png in ("zero_shot/ablations.png", "zero_shot/claims_forest.png", "explain/heatmaps.png",
                "explain/anatomy_attention_0.png", "pretrain/text_encoder.png"):
        assert (work / "reports/figures" / png).stat().st_size > 0, png
    report = json.loads((work / "reports/metrics/curation.json").read_text())
    assert report["figures"]["rejected"] == 7 and report["ct"]["rejected"] == 7
    assert report["extraction"]["f1"] >= 0.95
    assert report["anatomy_assignment"]["accuracy"] >= 0.95

    second = run_in([*DVC, "repro"], work)
    assert "Running stage" not in second, second
    assert "up to date" in run_in([*DVC, "status"], work)
