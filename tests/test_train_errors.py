"""Bad set-ups fail at once with a message that names the problem and the fix."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from test_train_fixtures import tiny_params, write_curated

from medvlp.train import KNOWN_MODELS, TrainConfig, train
from medvlp.train.__main__ import main
from medvlp.train.distributed import micro_batch_size


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    return write_curated(tmp_path_factory.mktemp("curated"), n_figures=(8, 4), n_studies=(4, 2))


def test_unknown_model_lists_the_known_ones(curated, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'clipp'") as err:
        train({**tiny_params("clip", curated), "model": "clipp"}, out_dir=tmp_path, progress=False)
    assert all(name in str(err.value) for name in KNOWN_MODELS)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        TrainConfig.from_params({**tiny_params("clip", curated), "model": "clip_big", "recipe": "nope"})


def test_variant_entry_names_a_recipe(curated):
    cfg = TrainConfig.from_params({**tiny_params("clip", curated), "model": "clip_big", "recipe": "siglip"})
    assert cfg.model == "clip_big" and cfg.preset == "siglip" and cfg.stages[0].loss == "sigmoid"
    assert cfg.out_dir == "reports/pretrain/clip_big-s3"  # params.yaml's out_dir pattern, the tiny seed


def test_missing_shard_directory_says_run_curate(tmp_path):
    absent = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError) as err:
        train(tiny_params("fvlm", absent), out_dir=tmp_path / "out", progress=False)
    msg = str(err.value)
    assert str(absent / "shards" / "ct") in msg and "run the curate stage first: dvc repro curate" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the data check


def test_indivisible_global_batch(curated, tmp_path):
    with pytest.raises(ValueError, match=r"global_batch_size 6 is not divisible by world_size 1 x "
                                         r"grad_accum_steps 4 = 4"):
        train(tiny_params("clip", curated, global_batch_size=6, grad_accum_steps=4), out_dir=tmp_path,
              progress=False)
    with pytest.raises(ValueError, match="world_size 3 x grad_accum_steps 2 = 6; .* multiple of 6"):
        micro_batch_size(32, 3, 2)
    assert micro_batch_size(48, 3, 2) == 8


@pytest.mark.parametrize(("change", "message"), [
    ({"stages": [{"steps": 2}]}, "recipe 'conceptclip' has 2 stages"),
    ({"stages": [{"steps": 2}, {"step": 2}]}, r"stage 1: unknown keys \['step'\]"),
    ({"learning_rate": 1e-3}, r"unknown keys \['learning_rate'\]"),
    ({"optimizer": {"lr": 1e-3, "warmup": 3}}, r"optimizer: unknown keys \['warmup'\]"),
    ({"stages": [{"steps": 2, "freeze": ["vision"]}, {"steps": 2}]}, r"cannot freeze \['vision'\]"),
    ({"precision": "fp8"}, "precision must be"),
])
def test_bad_params_are_named(curated, change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_params({**tiny_params("conceptclip", curated), **change})


def test_cli_trains_from_params_yaml(curated, tmp_path, capsys):
    common = tiny_params("siglip", curated, steps=1)
    common.pop("model")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain": {"common": common, "models": {"siglip": {}}}}))
    assert main(["--params", str(params_file), "--model", "siglip", "--out-dir", str(tmp_path / "run"),
                 "--set", "optimizer.lr=5e-4", "--no-progress"]) == 0
    assert '"steps": 1' in capsys.readouterr().out and (tmp_path / "run" / "last.pt").is_file()
    run_info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert run_info["params"]["optimizer"]["lr"] == 5e-4
    with pytest.raises(KeyError, match="no entry 'clipp'"):
        main(["--params", str(params_file), "--model", "clipp"])


def test_every_key_of_pretrain_common_is_required(curated):
    """params.yaml's pretrain.common is the only home of a run's settings: TrainConfig has no default that could
    disagree with it, and requires exactly the keys it sets (``recipe`` is the one optional key)."""
    from dataclasses import MISSING, fields

    from test_train_fixtures import repo_params

    from medvlp.train.config import BLOCK_KEYS, COMMON_KEYS

    common = repo_params()["pretrain"]["common"]
    assert sorted(COMMON_KEYS) == sorted(common)
    assert [f.name for f in fields(TrainConfig) if f.default is not MISSING or f.default_factory is not MISSING] == []
    for block, keys in BLOCK_KEYS.items():
        assert sorted(keys) == sorted(common[block]), block


@pytest.mark.parametrize(("drop", "section", "missing"), [
    (("optimizer", "device"), "pretrain.common", "['device', 'optimizer']"),
    (("pc_align",), "pretrain.common", "['pc_align']"),
    (("optimizer.lr", "optimizer.text_lr_scale"), "pretrain.common.optimizer", "['lr', 'text_lr_scale']"),
    (("volume.spatial_size",), "pretrain.common.volume", "['spatial_size']"),
    (("image_augment.hflip_prob",), "pretrain.common.image_augment", "['hflip_prob']"),
])
def test_a_missing_setting_is_named_with_its_section(curated, tmp_path, capsys, drop, section, missing):
    from medvlp.stage_args import MissingParamsError

    params = tiny_params("clip", curated, steps=1)
    for key in drop:
        block, _, inner = key.partition(".")
        del (params[block] if inner else params)[inner or block]
    message = rf"pretrain params of 'clip': missing {re.escape(missing)} of params.yaml section '{section}'"
    with pytest.raises(MissingParamsError, match=message) as err:
        TrainConfig.from_params(params)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match=message):
        train(params, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    params.pop("model")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain": {"common": params, "models": {"clip": {}}}}))
    with pytest.raises(SystemExit, match=rf"{re.escape(str(params_file))}: {message}"):
        main(["--params", str(params_file), "--model", "clip", "--out-dir", str(tmp_path / "run"), "--no-progress"])


def test_notebook_namespace_keeps_null_settings(curated):
    """Papermill injects ``init_from = None``; a null setting is a value, not a missing key."""
    params = tiny_params("clip", curated)
    namespace = {**params, "In": [], "json": json, "unrelated": 1}
    assert TrainConfig.from_namespace(namespace) == TrainConfig.from_params(params)
    assert params["init_from"] is None and params["init_open_clip"] is None
    namespace.pop("init_from")
    with pytest.raises(ValueError, match=r"missing \['init_from'\] of params.yaml section 'pretrain.common'"):
        TrainConfig.from_namespace(namespace)
