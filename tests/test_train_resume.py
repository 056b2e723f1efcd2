"""A run killed mid-way and resumed ends bit-identical to an uninterrupted run (CPU, determinism on)."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_fixtures import tiny_params, write_curated

from medvlp.train import StopTraining, train
from medvlp.train.runlog import read_csv

TIMING = {"samples_per_s", "elapsed_s"}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"))


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize(("model", "steps", "kill_at"), [("conceptclip", 3, 5), ("fvlm", 4, 3)])
def test_killed_and_resumed_run_equals_uninterrupted(curated, tmp_path, model, steps, kill_at):
    params = tiny_params(model, curated, steps=steps, checkpoint_every=2)
    full = train(params, out_dir=tmp_path / "full", progress=False)

    def kill(row):
        if row["step"] == kill_at:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(params, out_dir=tmp_path / "killed", progress=False, callback=kill)
    # killed after step kill_at: the newest checkpoint is from the step before (checkpoint_every = 2)
    killed_state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["train_state"]
    assert killed_state["step"] == kill_at - 1
    assert len(read_csv(tmp_path / "killed" / "train_log.csv")) == kill_at

    # resume with a loader worker: the data stream does not depend on the number of workers
    resumed = train({**params, "num_workers": 1}, out_dir=tmp_path / "killed", progress=False)
    assert resumed.steps == full.steps == (2 * steps if model == "conceptclip" else steps)

    a = torch.load(full.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    _assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    _assert_same_tensors(a["train_state"]["optimizer"], b["train_state"]["optimizer"], "optimizer")
    _assert_same_tensors(a["train_state"]["scheduler"], b["train_state"]["scheduler"], "scheduler")
    _assert_same_tensors(a["train_state"]["rng"], b["train_state"]["rng"], "rng")

    rows_a, rows_b = read_csv(full.train_log), read_csv(resumed.train_log)
    assert [r["step"] for r in rows_b] == [str(i) for i in range(1, full.steps + 1)]
    untimed = lambda row: {k: v for k, v in row.items() if k not in TIMING}
    assert [untimed(r) for r in rows_a] == [untimed(r) for r in rows_b]
    assert read_csv(full.val_log) == read_csv(resumed.val_log)
    assert resumed.final_losses == full.final_losses
    info = json.loads(resumed.run_info.read_text())
    assert info["resumed_from_steps"] == [kill_at - 1] and info["status"] == "finished"


def test_finished_run_resumes_to_a_no_op(curated, tmp_path):
    params = tiny_params("clip", curated, steps=2)
    first = train(params, out_dir=tmp_path, progress=False)
    before = torch.load(first.last_checkpoint, weights_only=True)["state_dict"]
    again = train(params, out_dir=tmp_path, progress=False)
    assert again.steps == 2 and len(read_csv(again.train_log)) == 2
    _assert_same_tensors(before, torch.load(again.last_checkpoint, weights_only=True)["state_dict"])
    fresh = train({**params, "resume": False}, out_dir=tmp_path, progress=False)
    assert fresh.steps == 2 and json.loads(fresh.run_info.read_text())["resumed_from_steps"] == []
