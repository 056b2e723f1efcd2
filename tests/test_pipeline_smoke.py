"""The DVC pipeline end to end on a tiny synthetic corpus: every stage runs, a second repro reruns nothing."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medvlp.data.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


TINY_2D = {
    "embed_dim": 32,
    "vision_cfg": {"medvlp_conv": True, "image_size": 32, "channels": [8, 16], "blocks": 1},
    "text_cfg": {"hf_model_name": "reports/text_encoder", "context_length": 64, "hf_proj_type": "linear"},
}
TINY_TEXT = {"vocab_size": 400, "context_length": 64, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
             "intermediate_size": 64, "steps": 4, "concept_steps": 4, "batch_size": 16, "warmup_steps": 1,
             "val_every": 2}
TINY_3D = {"img_size": [32, 32, 16], "patch_size": [8, 8, 8], "hidden_size": 32, "mlp_dim": 64, "num_layers": 2,
           "num_heads": 2}
TINY_CONV3D = {"img_size": [32, 32, 16], "channels": [4, 8, 16]}


def tiny_params(params: dict) -> dict:
    """The repository's params.yaml shrunk to seconds: tiny towers, 2 steps per stage, 20 bootstrap samples."""
    pre = params["pretrain"]
    pre["common"].update(architecture={**pre["common"]["architecture"], "clip_model": TINY_2D}, global_batch_size=4,
                         val_every=2, val_max_samples=8, checkpoint_every=2, num_workers=0,
                         volume={**pre["common"]["volume"], "spatial_size": [32, 32, 16]})
    for name, entry in pre["models"].items():
        entry["stages"] = [{"steps": 2} for _ in entry["stages"]]
        entry.pop("global_batch_size", None)
        if name.startswith(("fvlm", "ct_clip")):
            # the tower params.yaml picks (volume_tower), shrunk
            entry["architecture"] = {**entry.get("architecture", {}), "clip_model": TINY_2D, "vit3d": TINY_3D,
                                     "conv3d": TINY_CONV3D}
            if name.startswith("fvlm"):
                entry["architecture"]["pool_heads"] = 2
        if name.startswith("radclip"):
            entry["architecture"] = {"clip_model": TINY_2D, "max_slices": 16, "slice_heads": 2}
    params["pretrain_text"].update(TINY_TEXT)
    params["zero_shot"]["n_boot"] = params["explain"]["n_boot"] = 20
    params["zero_shot"]["probe_fractions"] = [0.5, 1.0]
    params["explain"]["n_examples"] = 2
    return params


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
def test_dvc_repro_twice_on_tiny_corpus(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    params = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("notebooks", "lib"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    generate_corpus(work / "data", n_figures=120, n_studies=40, progress=False)

    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], work)
    _run([*dvc, "init", "-q"], work)
    _run([*dvc, "config", "core.analytics", "false"], work)
    _run([*dvc, "add", "-q", "data"], work)
    _run([*dvc, "repro"], work)

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

    second = _run([*dvc, "repro"], work)
    assert "Running stage" not in second, second
    assert "up to date" in _run([*dvc, "status"], work)
