"""Every stage notebook run by hand (JupyterLab's "Run All": no Papermill, no DVC) reads its params.yaml section
and writes under scratch/<notebook>/ only: the pipeline stays up to date (medvlp.notebooks.notebook_parameters)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from medvlp.notebooks import PIPELINE_ENV
from medvlp.params import load_params, model_runs

#: The pipeline's order: each notebook reads what the stages before it wrote (03 and 04 the pipeline's checkpoints).
ORDER = ["01_curate", "02a_pretrain_text", "02_pretrain", "03_zero_shot", "04_explain"]


def _run_by_hand(work: Path, stem: str) -> str:
    """Execute notebooks/<stem>.ipynb top to bottom as it is, in a python3 kernel started in ``work``; returns
    the text its parameters cell printed."""
    nb = nbformat.read(work / "notebooks" / f"{stem}.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(work)}}).execute()
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def _json(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


@pytest.mark.slow
def test_notebooks_run_by_hand_take_params_yaml_and_write_only_scratch(tiny_project, tmp_path, monkeypatch):
    work = tmp_path / "repo"
    shutil.copytree(tiny_project, work, symlinks=True)
    monkeypatch.delenv(PIPELINE_ENV, raising=False)  # the kernels nbclient starts inherit os.environ: by hand
    params = load_params(work / "params.yaml")
    assert (work / "scratch").exists() is False

    timings = {}
    for stem in ORDER:
        started = time.perf_counter()
        printed = _run_by_hand(work, stem)
        timings[stem] = round(time.perf_counter() - started, 1)
        assert printed.startswith("Run by hand"), f"{stem}: {printed!r}"
        assert f"scratch/{stem}/" in printed, printed
        written = [p for p in (work / "scratch" / stem).rglob("*") if p.is_file()]
        assert written, f"{stem} wrote nothing under scratch/{stem}/"
    print("notebooks by hand (s):", timings)

    scratch = work / "scratch"
    # the values are params.yaml's (the tiny project's shrunk ones), not the notebooks' own
    curation = _json(scratch / "01_curate/reports/metrics/curation.json")["params"]
    for key in ("phash_max_distance", "shard_max_samples", "seed", "split", "strict"):
        assert curation[key] == params["curate"][key], key
    assert (scratch / "01_curate/reports/curated/figures.parquet").is_file()
    assert (scratch / "01_curate/reports/figures/curate").is_dir()

    text = _json(scratch / "02a_pretrain_text/reports/metrics/text_encoder.json")
    assert (text["steps"], text["concept_steps"]) == (params["pretrain_text"]["steps"],
                                                      params["pretrain_text"]["concept_steps"])
    assert (scratch / "02a_pretrain_text/reports/text_encoder/train_log.csv").is_file()
    assert (scratch / "02a_pretrain_text/reports/figures/pretrain/text_encoder.png").is_file()

    run = scratch / "02_pretrain/reports/pretrain/clip-s0"  # the first run of dvc.yaml's pretrain foreach
    info = _json(run / "run_info.json")
    assert info["steps_done"] == sum(s["steps"] for s in params["pretrain"]["models"]["clip"]["stages"])
    assert info["params"]["global_batch_size"] == params["pretrain"]["common"]["global_batch_size"]
    assert info["resumed_from_steps"] == [], "a hand run must not resume from the pipeline's last.pt"
    assert {"best.pt", "last.pt", "train_log.csv", "val_log.csv"} <= {p.name for p in run.iterdir()}
    assert (scratch / "02_pretrain/reports/figures/pretrain/clip-s0.png").is_file()

    zero_shot = _json(scratch / "03_zero_shot/reports/metrics/zero_shot.json")
    assert zero_shot["n_boot"] == params["zero_shot"]["n_boot"] != 1000
    assert any((scratch / "03_zero_shot/reports/metrics/scores").glob("*.parquet"))
    assert (scratch / "03_zero_shot/reports/figures/zero_shot/claims_forest.png").is_file()

    explain = _json(scratch / "04_explain/reports/metrics/explain.json")
    assert explain["n_boot"] == params["explain"]["n_boot"] != 1000
    assert (scratch / "04_explain/reports/figures/explain/heatmaps.png").is_file()

    # nothing DVC or git tracks changed
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=work, env=env, capture_output=True,
                            text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    porcelain = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work,
                               capture_output=True, text=True, check=True).stdout.splitlines()
    outside = [line for line in porcelain if not line[3:].startswith("scratch/")]
    assert outside == [], outside


@pytest.mark.slow
def test_pipeline_runs_of_the_notebooks_are_not_hand_runs(tiny_project):
    """The tiny project's `dvc repro` (medvlp notebook): no hand-run message, no redirect, no Papermill warning
    about the parameters the parameters cell does not declare."""
    assert "Passed unknown parameter" not in (tiny_project / "repro.log").read_text()
    assert not (tiny_project / "scratch").exists()
    executed = sorted((tiny_project / "reports" / "notebooks").glob("*.ipynb"))
    assert len(executed) == len(ORDER) - 1 + len(model_runs(load_params(tiny_project / "params.yaml")))
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        printed = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "scratch/" in str(o)]
        assert printed == [], f"{path.name}: {printed}"
