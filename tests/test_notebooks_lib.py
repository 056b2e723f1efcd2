"""medvlp.notebooks: a stage notebook's parameters by hand and by the pipeline (fast; the end-to-end run of every
notebook by hand is tests/test_notebooks_by_hand.py)."""

import logging
import os
from pathlib import Path

import nbformat
import pytest
import yaml

from medvlp import notebooks
from medvlp.notebooks import (
    PIPELINE_ENV,
    find_notebook_stage,
    notebook_parameters,
    output_path,
    redirect_outputs,
    run_notebook,
    strip_on_save,
)

DVC_YAML = {"stages": {
    "curate": {"cmd": "bin/medvlp notebook notebooks/01_curate.ipynb reports/notebooks/01_curate.ipynb "
                      "--section curate && echo done",
               "outs": ["reports/curated", {"reports/figures/curate": {"cache": False}}],
               "metrics": [{"reports/metrics/curation.json": {"cache": False}}]},
    "pretrain": {"foreach": {"clip-s0": {"model": "clip"}, "fvlm-s1": {"model": "fvlm"}},
                 "do": {"cmd": "python -m medvlp notebook notebooks/02_pretrain.ipynb "
                               "reports/notebooks/02_pretrain_${key}.ipynb --section pretrain --item ${key}",
                        "outs": ["reports/pretrain/${key}/best.pt", "reports/figures/pretrain/${key}.png"],
                        "plots": [{"reports/pretrain/${key}/train_log.csv": {"x": "step"}}]}},
    "zero_shot": {"cmd": "medvlp notebook notebooks/03_zero_shot.ipynb out.ipynb --section zero_shot --extra seeds",
                  "outs": ["reports/metrics/scores"]},
}}
PARAMS = {
    "curate": {"data_dir": "data", "out_dir": "reports/curated", "metrics_path": "reports/metrics/curation.json",
               "figures_dir": "reports/figures/curate", "phash_max_distance": 4},
    "pretrain": {"common": {"curated_dir": "reports/curated", "out_dir": "reports/pretrain/{model}-s{seed}",
                            "init_from": None, "seed": 0},
                 "models": {"clip": {"stages": [{"steps": 2}]},
                            "fvlm": {"init_from": {"path": "reports/pretrain/clip-s0/best.pt"}}}},
    "seeds": {"clip": [0], "fvlm": [0, 1]},
    "zero_shot": {"pretrain_dir": "reports/pretrain", "scores_dir": "reports/metrics/scores", "n_boot": 20},
}
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
          "language_info": {"name": "python"}}


def test_the_stage_of_a_notebook_comes_from_dvc_yaml_whatever_launches_it():
    curate = find_notebook_stage(DVC_YAML, "01_curate")
    assert (curate.stage, curate.section, curate.item, curate.extra) == ("curate", "curate", None, ())
    assert curate.outputs == ("reports/curated", "reports/figures/curate", "reports/metrics/curation.json")
    first = find_notebook_stage(DVC_YAML, "02_pretrain")
    assert (first.stage, first.item, first.items) == ("pretrain@clip-s0", "clip-s0", ("clip-s0", "fvlm-s1"))
    fvlm = find_notebook_stage(DVC_YAML, "02_pretrain", "fvlm-s1")
    assert fvlm.outputs == ("reports/pretrain/fvlm-s1/best.pt", "reports/figures/pretrain/fvlm-s1.png",
                            "reports/pretrain/fvlm-s1/train_log.csv")
    assert find_notebook_stage(DVC_YAML, "03_zero_shot").extra == ("seeds",)
    with pytest.raises(LookupError, match="not a key"):
        find_notebook_stage(DVC_YAML, "02_pretrain", "siglip-s0")
    with pytest.raises(LookupError, match="no foreach"):
        find_notebook_stage(DVC_YAML, "01_curate", "clip-s0")
    with pytest.raises(LookupError, match="no stage runs notebooks/05_new.ipynb"):
        find_notebook_stage(DVC_YAML, "05_new")


def test_the_repository_dvc_yaml_names_a_stage_for_every_notebook(repo_root):
    for path in sorted((repo_root / "notebooks").glob("*.ipynb")):
        stage = find_notebook_stage(repo_root / "dvc.yaml", path.stem)
        assert f"reports/notebooks/{path.stem}" in " ".join(stage.outputs), stage


def test_only_the_stage_own_outputs_move_to_scratch():
    params = {"model": "fvlm", "seed": 1, "curated_dir": "reports/curated",
              "out_dir": "reports/pretrain/{model}-s{seed}", "init_from": {"path": "reports/pretrain/clip-s0/best.pt"},
              "plots": ["reports/figures/pretrain/fvlm-s1.png"], "figure": "./reports/figures/pretrain/fvlm-s1.png",
              "device": "auto", "empty": "", "n": 3}
    outputs = find_notebook_stage(DVC_YAML, "02_pretrain", "fvlm-s1").outputs
    got = redirect_outputs(params, outputs, "scratch/02_pretrain")
    assert got == {**params, "out_dir": "scratch/02_pretrain/reports/pretrain/{model}-s{seed}",
                   "plots": ["scratch/02_pretrain/reports/figures/pretrain/fvlm-s1.png"],
                   "figure": "scratch/02_pretrain/reports/figures/pretrain/fvlm-s1.png"}
    assert params["out_dir"] == "reports/pretrain/{model}-s{seed}", "the input is not modified"


@pytest.fixture
def mini_repo(tmp_path, monkeypatch):
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    monkeypatch.setattr(notebooks, "_hand_run_scratch", None)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where JupyterLab starts a notebook's kernel
    return tmp_path


def test_by_hand_the_section_is_read_and_outputs_go_to_scratch(mini_repo, capsys):
    with pytest.raises(RuntimeError, match="parameters cell"):
        output_path("reports/figures/pretrain/x.png")
    got = notebook_parameters("02_pretrain", item="fvlm-s1")
    assert Path.cwd() == mini_repo.resolve(), "relative paths are the repository's"
    assert got["out_dir"] == "scratch/02_pretrain/reports/pretrain/{model}-s{seed}"
    assert got["init_from"] == {"path": "reports/pretrain/clip-s0/best.pt"}, "an input stays"
    assert (got["model"], got["seed"], got["curated_dir"]) == ("fvlm", 1, "reports/curated")
    printed = capsys.readouterr().out
    assert printed.startswith("Run by hand") and printed.count("\n") == 1, printed
    assert "`pretrain` (item `fvlm-s1`)" in printed and "scratch/02_pretrain/" in printed, printed
    assert output_path("reports/figures/pretrain/fvlm-s1.png") == Path("scratch/02_pretrain/reports/figures/pretrain/"
                                                                       "fvlm-s1.png")

    got = notebook_parameters("03_zero_shot")
    assert got["seeds"] == PARAMS["seeds"] and got["pretrain_dir"] == "reports/pretrain"
    assert got["scores_dir"] == "scratch/03_zero_shot/reports/metrics/scores"
    assert "+ section `seeds`" in capsys.readouterr().out


def test_by_the_pipeline_nothing_is_read_nor_redirected(mini_repo, monkeypatch, capsys):
    monkeypatch.setenv(PIPELINE_ENV, "1")
    assert notebook_parameters("01_curate") == {}
    assert capsys.readouterr().out == ""
    assert output_path("reports/figures/pretrain/x.png") == Path("reports/figures/pretrain/x.png")


def test_run_notebook_marks_the_kernel_and_papermill_stays_quiet(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    nb = nbformat.v4.new_notebook(metadata=KERNEL)
    nb.cells = [nbformat.v4.new_code_cell("import os\nfrom medvlp.notebooks import notebook_parameters\n"
                                          "globals().update(notebook_parameters('never_read'))"),
                nbformat.v4.new_code_cell("assert os.environ['MEDVLP_PIPELINE_RUN'] == '1'\nassert n_boot == 7")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, tmp_path / "demo.ipynb")
    with caplog.at_level(logging.INFO, logger="papermill"):
        run_notebook(tmp_path / "demo.ipynb", tmp_path / "out.ipynb", {"n_boot": 7}, progress=False)
    assert "unknown parameter" not in caplog.text
    assert PIPELINE_ENV not in os.environ, "the mark is only for the kernel"


def test_strip_on_save_keeps_source_notebooks_clean(tmp_path):
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(metadata=KERNEL)
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, tmp_path / "notebooks" / "01_x.ipynb")
    run = nbformat.v4.new_notebook(metadata={**KERNEL, "language_info": {"name": "python", "version": "3.11"}})
    timing = {"execution": {"iopub.status.idle": "2026-01-01T00:00:00Z"}}
    run.cells = [nbformat.v4.new_code_cell("print(1)", execution_count=3, metadata=timing,
                                           outputs=[nbformat.v4.new_output("stream", text="1\n")])]
    manager = type("CM", (), {"root_dir": str(tmp_path)})()
    for path in ("notebooks/01_x.ipynb", "scratch/01_x.ipynb"):
        model = {"type": "notebook", "content": nbformat.from_dict(run.copy())}
        strip_on_save(model, path, manager)
        cell = model["content"]["cells"][0]
        stripped = (cell["outputs"], cell["execution_count"], cell["metadata"]) == ([], None, {})
        assert stripped == (path.startswith("notebooks/")), path
        kept = model["content"]["metadata"]["language_info"]
        assert kept == ({"name": "python"} if path.startswith("notebooks/") else run.metadata.language_info), path
