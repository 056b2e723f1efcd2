"""Two gloo processes under torchrun train like one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from test_train_fixtures import tiny_params, write_curated

from medvlp.train import train
from medvlp.train.runlog import read_csv

pytestmark = pytest.mark.distributed


def test_two_process_torchrun_matches_one_process(tmp_path, repo_root):
    curated = write_curated(tmp_path / "curated")
    common = tiny_params("conceptclip", curated, steps=2, global_batch_size=8)
    common.pop("model")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain": {"common": common, "models": {"conceptclip": {}}}}))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medvlp.train", "--params", str(params_file), "--model", "conceptclip",
           "--out-dir", str(tmp_path / "two"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    one = train({**common, "model": "conceptclip"}, out_dir=tmp_path / "one", progress=False)
    rows_one, rows_two = read_csv(one.train_log), read_csv(tmp_path / "two" / "train_log.csv")
    assert len(rows_one) == len(rows_two) == 4  # IT-Align stage then IT + PC-Align stage
    for r1, r2 in zip(rows_one, rows_two):
        for key in ("loss", "it_align", "pc_align", "lr"):
            if r1[key] or r2[key]:
                assert abs(float(r1[key]) - float(r2[key])) <= 1e-5, (r1["step"], key, r1[key], r2[key])
        assert float(r1["grad_norm"]) == pytest.approx(float(r2["grad_norm"]), rel=1e-5)
    assert rows_two[-1]["pc_align"] != ""  # the second stage ran PC-Align across both ranks
    val_one, val_two = read_csv(one.val_log), read_csv(tmp_path / "two" / "val_log.csv")
    assert [float(r["val_loss"]) for r in val_one] == pytest.approx([float(r["val_loss"]) for r in val_two],
                                                                     abs=1e-5)
    w1 = torch.load(one.last_checkpoint, weights_only=True)
    w2 = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert w2["train_state"]["world_size"] == 2 and len(w2["train_state"]["rng"]) == 2
    for key, value in w1["state_dict"].items():
        assert torch.allclose(value, w2["state_dict"][key], atol=1e-5), key
    # only rank 0 prints the summary
    assert proc.stdout.count('"final_losses"') == 1
