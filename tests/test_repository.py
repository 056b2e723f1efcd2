"""Repository-level contracts: clean source notebooks, the corpus hash, params and the CLI."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from medvlp.cli import main as cli_main
from medvlp.data.dirhash import dvc_dir_hash, dvc_file_hash
from medvlp.notebooks import notebook_has_outputs, strip_outputs
from medvlp.params import deep_merge, load_params, load_yaml, stage_params

REPO = Path(__file__).resolve().parents[1]


def test_source_notebooks_carry_no_outputs():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found under notebooks/"
    dirty = [nb.name for nb in notebooks if notebook_has_outputs(nb)]
    assert dirty == [], f"strip outputs with `medvlp strip-notebooks notebooks/*.ipynb`: {dirty}"


def test_every_notebook_has_one_parameters_cell():
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged 'parameters'"


def test_strip_outputs_detects_and_removes(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    nb.cells.append(cell)
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert notebook_has_outputs(path)
    assert strip_outputs(path) is True
    assert not notebook_has_outputs(path)
    assert strip_outputs(path) is False


def test_dvc_stages_have_params_sections():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for p in stage.get("params", []):
            key = p if isinstance(p, str) else next(iter(p))
            assert key.split(".")[0] in params, f"stage {name}: params.yaml lacks {key}"


def test_stage_params_merges_common_and_item():
    params = {"pretrain": {"common": {"lr": 1e-3, "opt": {"wd": 0.1, "b": 1}},
                           "models": {"clip": {"opt": {"wd": 0.2}}}}}
    got = stage_params(params, "pretrain", "clip")
    assert got == {"lr": 1e-3, "opt": {"wd": 0.2, "b": 1}, "model": "clip"}
    with pytest.raises(KeyError, match="no entry 'nope'"):
        stage_params(params, "pretrain", "nope")
    with pytest.raises(KeyError, match="no section 'x'"):
        stage_params(params, "x")
    assert deep_merge({"a": [1]}, {"a": [2]}) == {"a": [2]}


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML's safe_load reads "3e-4" as a string (YAML 1.1); DVC and users write it as a float
    got = load_yaml("a: 3e-4\nb: 1.0e-3\nc: -2E+2\nd: 12\ne: [1e-2, 3e4x, .5]\nf: '1e-3'\n")
    assert got == {"a": 3e-4, "b": 1e-3, "c": -200.0, "d": 12, "e": [1e-2, "3e4x", 0.5], "f": "1e-3"}
    assert isinstance(got["d"], int)
    (tmp_path / "params.yaml").write_text("pretrain:\n  optimizer: {lr: 5e-4}\n")
    assert load_params(tmp_path / "params.yaml")["pretrain"]["optimizer"]["lr"] == 5e-4


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_dir_hash_matches_dvc_add(tmp_path):
    """Our hash equals what `dvc add` records, so a regenerated corpus can be verified offline."""
    import subprocess
    import sys

    repo = tmp_path / "repo"
    _write_tree(repo / "data", {"a.txt": b"hello\n", "sub/b.bin": bytes(range(256)), "sub/c/d.json": b"{}"})
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=repo, check=True)
    assert dvc_dir_hash(repo / "data") == dvc_file_hash(repo / "data.dvc")
    (repo / "data" / "a.txt").write_bytes(b"hello!\n")
    assert dvc_dir_hash(repo / "data") != dvc_file_hash(repo / "data.dvc")
    assert cli_main(["verify-data", str(repo / "data"), str(repo / "data.dvc")]) == 1


@pytest.mark.slow
def test_regenerated_corpus_matches_data_dvc(tmp_path):
    """The full default corpus regenerated here is byte-identical to the one data.dvc records, and its hash is
    the SYNTHETIC_CORPUS_MD5 that ``make data`` compares data.dvc with before regenerating."""
    from medvlp.data.synthetic import SYNTHETIC_CORPUS_MD5, generate_corpus

    summary = generate_corpus(tmp_path / "data", progress=False)
    assert summary["n_figures"] >= 4000 and summary["n_studies"] >= 600
    assert dvc_dir_hash(tmp_path / "data") == SYNTHETIC_CORPUS_MD5
    assert dvc_dir_hash(tmp_path / "data") == dvc_file_hash(REPO / "data.dvc")
    size = sum(p.stat().st_size for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert size <= 300 * 2**20, f"corpus is {size / 2**20:.0f} MiB, over the 300 MiB budget"
    corpus = json.loads((tmp_path / "data" / "corpus.json").read_text())
    assert corpus["seed"] == summary["seed"]


def test_readme_results_match_committed_metrics(tmp_path):
    """README.md's results block is exactly what `medvlp update-readme` renders from reports/metrics."""
    import shutil

    from medvlp.readme_results import update_readme

    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    changed = update_readme(copy, REPO / "reports" / "metrics")
    assert changed is False, "README results are stale: run `medvlp update-readme`"


def test_pretrain_table_averages_loss_windows_per_stage(tmp_path):
    from medvlp.readme_results import pretrain_markdown, stage_loss_windows

    rows = ["step,stage,loss"] + [f"{i},0,{10 - i}" for i in range(10)] + [f"{10 + i},1,{5.0 + 0.02 * i}"
                                                                            for i in range(20)]
    for model in ("a", "b"):
        run = tmp_path / model
        run.mkdir()
        (run / "train_log.csv").write_text("\n".join(rows if model == "a" else rows[:11]) + "\n")
        (run / "run_info.json").write_text(json.dumps({
            "model": model, "steps_done": 30, "parameters": {"total": 1000}, "elapsed_s": 60.0,
            "mean_samples_per_s": 5.0, "device": {"type": "cpu", "world_size": 1}}))
    windows = stage_loss_windows(tmp_path / "a" / "train_log.csv")
    assert windows[0] == (10.0, 1.0)
    assert windows[1] == pytest.approx((5.01, 5.37))
    table = pretrain_markdown(tmp_path)
    assert "| a | 30 | 1,000 | 60 | 5.0 | 10.000 -> 1.000; 5.010 -> 5.370 | cpu x1 |" in table
    assert "All pre-training together: 2.0 min." in table
    assert "less than 2%): a." in table   # b's only stage fell 10 -> 1


def test_paper_size_parses_for_every_model(tmp_path, capsys):
    from medvlp.models import resolve_model_config, volume_size
    from medvlp.params import apply_size
    from medvlp.train.config import TrainConfig

    params = apply_size("paper", yaml.safe_load((REPO / "params.yaml").read_text()))
    sizes = {}
    for model in params["pretrain"]["models"]:
        cfg = TrainConfig.from_params(stage_params(params, "pretrain", model))
        resolved = resolve_model_config(cfg.preset, **cfg.architecture)
        if "volume_tower" in resolved:
            assert resolved["volume_tower"] == "vit3d", model  # the papers' 3D ViT, not the CPU conv3d
            sizes[model] = list(volume_size(resolved))
        else:
            sizes[model] = resolved["clip_model"]["vision_cfg"]["image_size"]
    assert sizes["conceptclip"] == 384 and sizes["fvlm"] == [352, 256, 112] and sizes["radclip"] == 224
    assert sizes["ct_clip_global"] == sizes["fvlm_nocal"] == [352, 256, 112]
    assert cli_main(["size", "paper", "--base", str(REPO / "params.yaml"), "-o", str(tmp_path / "p.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["pretrain"]["common"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="unknown size"):
        apply_size("nope", {})


def test_chance_counts_use_the_whole_ci():
    from medvlp.readme_results import chance_counts

    per = {"a": {"ci_low": 0.55, "ci_high": 0.7}, "b": {"ci_low": 0.45, "ci_high": 0.6},
           "c": {"ci_low": 0.2, "ci_high": 0.49}, "d": {"ci_low": 0.5, "ci_high": 0.8}}
    assert chance_counts(per) == "1 / 1 of 4"  # d touches 0.5: neither above nor below


def test_dvc_pretrain_stages_are_exactly_the_seeded_runs():
    """dvc.yaml's pretrain@<model>-s<seed> stages are the runs of params.yaml's `seeds`, and zero_shot depends on
    every one of them; RadCLIP runs start from the trained clip-s0."""
    from medvlp.params import model_runs

    params = load_params(REPO / "params.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    foreach = stages["pretrain"]["foreach"]
    runs = model_runs(params)
    assert list(foreach) == runs
    for run, item in foreach.items():
        assert run == f"{item['model']}-s{run.rsplit('-s', 1)[1]}"
        assert item["init"] == ("reports/pretrain/clip-s0/best.pt" if item["model"].startswith("radclip")
                                else "notebooks/02_pretrain.ipynb")
    deps = set(stages["zero_shot"]["deps"])
    evaluated = set(params["zero_shot"]["figure_models"]) | set(params["zero_shot"]["ct_models"])
    assert {f"reports/pretrain/{r}/best.pt" for r in runs if r.rsplit("-s", 1)[0] in evaluated} <= deps
    assert evaluated == set(params["seeds"]), "every evaluated model has seeds and every seeded model is evaluated"
    assert all(len(params["seeds"][m]) >= 2 for m in ("ct_clip_global", "fvlm_nocal", "fvlm_normalcal", "fvlm"))


def test_stage_params_of_a_run_sets_its_seed():
    params = {"seeds": {"clip": [0, 3]}, "pretrain": {"common": {"seed": 0, "lr": 1}, "models": {"clip": {}}}}
    assert stage_params(params, "pretrain", "clip-s3") == {"seed": 3, "lr": 1, "model": "clip"}
    assert stage_params(params, "pretrain", "clip")["seed"] == 0
    with pytest.raises(KeyError, match="seed 2 is not in params.yaml seeds.clip"):
        stage_params(params, "pretrain", "clip-s2")
