"""A tiny copy of this repository (tiny towers, 2 steps per stage, a 120-figure / 40-study corpus) for tests
that run the DVC pipeline, its notebooks and its remotes. ``build_tiny_project`` runs ``dvc repro`` once and
commits everything to git, so tests can clone it or copy it (conftest: ``tiny_project``)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from medvlp.data.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
GIT = ["git", "-c", "user.name=medvlp tests", "-c", "user.email=tests@medvlp.invalid", "-c", "init.defaultBranch=main"]


def run_in(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` in ``cwd`` with this interpreter's bin folder first on PATH; assert it succeeds."""
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


def shrink_params(params: dict) -> dict:
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



def build_tiny_project(work: Path) -> dict:
    """Copy dvc.yaml, notebooks and lib into ``work`` with :func:`shrink_params`, generate a tiny corpus,
    ``dvc repro`` and commit; returns the tiny params."""
    work.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    params = shrink_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("notebooks", "lib", "bin"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (work / "external_weights").mkdir()  # released weights (none here): a dependency of zero_shot and explain
    shutil.copy(REPO / "external_weights" / "README.md", work / "external_weights" / "README.md")
    generate_corpus(work / "data", n_figures=120, n_studies=40, progress=False)
    run_in([*GIT, "init", "-q"], work)
    run_in([*DVC, "init", "-q"], work)
    run_in([*DVC, "config", "core.analytics", "false"], work)
    run_in([*DVC, "add", "-q", "data"], work)
    (work / "repro.log").write_text(run_in([*DVC, "repro"], work))
    with open(work / ".gitignore", "a") as ignore:  # after `dvc add`'s /data, which git must keep ignoring
        ignore.write("repro.log\n__pycache__/\n.venv\n")
    run_in([*GIT, "add", "-A"], work)
    run_in([*GIT, "commit", "-q", "-m", "tiny project"], work)
    return params
