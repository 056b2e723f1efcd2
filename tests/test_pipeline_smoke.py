"""The DVC pipeline end to end on a tiny synthetic corpus: every stage runs, a second repro reruns nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medvlp.data.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@pytest.mark.slow
def test_dvc_repro_twice_on_tiny_corpus(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    for folder in ("notebooks", "lib"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    generate_corpus(work / "data", n_figures=60, n_studies=12, progress=False)

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
    report = json.loads((work / "reports/metrics/curation.json").read_text())
    assert report["figures"]["rejected"] == 7 and report["ct"]["rejected"] == 7
    assert report["extraction"]["f1"] >= 0.95
    assert report["anatomy_assignment"]["accuracy"] >= 0.95

    second = _run([*dvc, "repro"], work)
    assert "Running stage" not in second, second
    assert "up to date" in _run([*dvc, "status"], work)
