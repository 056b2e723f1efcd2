"""Data stream, transforms, optimiser groups, schedule and RNG capture of medvlp.train."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from test_train_fixtures import TINY_CLIP, write_curated

from medvlp.models import build_model
from medvlp.train.data import (
    FigureItems,
    ShardStream,
    collate,
    concept_identity,
    epoch_order,
    find_shards,
    index_shards,
    make_loader,
    text_group_id,
)
from medvlp.train.determinism import capture_rng_state, restore_rng_state
from medvlp.train.optim import no_weight_decay_names, parameter_groups, warmup_cosine
from medvlp.train.transforms import ImageTransform, VolumeTransform, foreground_window, volume_to_slices


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = write_curated(tmp_path_factory.mktemp("curated"), n_figures=(22, 4), n_studies=(2, 0))
    paths = find_shards(root, "figures", "train")
    return paths, index_shards(paths)


def sample_number(sample: dict, rng) -> dict:
    """make_item that returns the figure's number and one draw of its augmentation generator."""
    return {"n": torch.tensor(int(sample["__key__"][-4:])),
            "draw": torch.tensor(rng.random() if rng is not None else -1.0)}


def _numbers(batches) -> list[int]:
    return [int(n) for b in batches for n in b["n"]]


def test_index_reads_every_sample(figures):
    paths, refs = figures
    assert len(paths) == 4  # 22 samples, 7 per shard
    assert [r.key for r in refs] == [f"Ftrain{i:04d}" for i in range(22)]
    assert {ext for r in refs for ext, _, _ in r.members} == {"png", "json"}


def test_epoch_order_is_a_seeded_permutation():
    sizes = [7, 7, 7, 1]
    a = epoch_order(sizes, seed=1, stage=0, epoch=0, buffer=5)
    assert sorted(a.tolist()) == list(range(22))
    assert np.array_equal(a, epoch_order(sizes, seed=1, stage=0, epoch=0, buffer=5))
    assert not np.array_equal(a, epoch_order(sizes, seed=1, stage=0, epoch=1, buffer=5))
    assert not np.array_equal(a, epoch_order(sizes, seed=2, stage=0, epoch=0, buffer=5))
    # without a buffer, shards stay contiguous (only their order is permuted)
    orders = [epoch_order(sizes, seed=s, stage=0, epoch=0, buffer=1).tolist() for s in range(4)]
    for flat in orders:
        jumps = [flat[i + 1] for i in range(21) if flat[i] + 1 != flat[i + 1]]
        assert set(jumps) <= {0, 7, 14, 21} and flat[0] in {0, 7, 14, 21}
    assert len({tuple(o) for o in orders}) > 1


def test_ranks_and_workers_split_one_global_stream(figures):
    paths, refs = figures
    single = ShardStream(paths, refs, sample_number, micro_batch=4, shuffle_buffer=5, limit=40)
    reference = list(make_loader(single))
    order = _numbers(reference)
    assert len(order) == 40 and sorted(order[:22]) == list(range(22))  # epoch 0, then epoch 1 begins

    # 2 ranks x 2 workers, micro-batch 2: the k-th micro-step of rank r is global block (2k + r)
    per_rank = []
    for rank in range(2):
        stream = ShardStream(paths, refs, sample_number, micro_batch=2, rank=rank, world_size=2,
                             shuffle_buffer=5, limit=40)
        per_rank.append(list(make_loader(stream, num_workers=2)))
    merged = [b for pair in zip(*per_rank) for b in pair]
    assert _numbers(merged) == order
    draws = torch.cat([b["draw"] for b in merged])
    assert torch.equal(draws, torch.cat([b["draw"] for b in reference]))  # same augmentation per sample


def test_resumed_stream_skips_exactly_what_was_consumed(figures):
    paths, refs = figures
    full = _numbers(make_loader(ShardStream(paths, refs, sample_number, micro_batch=4, limit=36)))
    rest = _numbers(make_loader(ShardStream(paths, refs, sample_number, micro_batch=4, start=24, limit=12)))
    assert rest == full[24:]
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        ShardStream(paths, refs, sample_number, micro_batch=4, start=6)


def test_collate_offsets_concept_owners():
    items = [{"x": torch.zeros(2), "concept_spans": torch.tensor([[1, 3]])},
             {"x": torch.ones(2), "concept_spans": torch.zeros(0, 2, dtype=torch.long)},
             {"x": torch.ones(2), "concept_spans": torch.tensor([[2, 4], [5, 6]])}]
    batch = collate(items)
    assert batch["x"].shape == (3, 2)
    assert batch["concept_spans"].tolist() == [[1, 3], [2, 4], [5, 6]]
    assert batch["concept_owner"].tolist() == [0, 2, 2]


def test_figure_items_name_each_kept_concept():
    caption = "Chest X-ray showing pleural effusion and cardiomegaly; pleural effusion again."
    concepts = [{"concept_id": "MC001", "start_char": 20, "end_char": 36},
                {"concept_id": "MC003", "start_char": 41, "end_char": 53},
                {"concept_id": "MC001", "start_char": 55, "end_char": 71}]
    sample = {"__key__": "F1", "image": np.zeros((40, 40), np.uint8),
              "meta": {"caption": caption, "concepts": concepts}}
    item = FigureItems(ImageTransform(32), TINY_CLIP["text_cfg"], with_concepts=True)(sample, None)
    ids = item["concept_ids"].tolist()
    assert len(ids) == item["concept_spans"].shape[0] == 3
    assert ids[0] == ids[2] == concept_identity({"concept_id": "MC001"}) != ids[1]
    first = {**item, "concept_ids": item["concept_ids"][:1], "concept_spans": item["concept_spans"][:1]}
    batch = collate([item, first])
    assert batch["concept_ids"].tolist() == ids + ids[:1] and batch["concept_owner"].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="neither 'concept_id' nor 'cui'"):
        concept_identity({"start_char": 0, "end_char": 3})


def test_text_group_ids_are_stable():
    assert text_group_id("liver shows no significant abnormalities.") == text_group_id(
        "liver shows no significant abnormalities.")
    assert text_group_id("a") != text_group_id("b")
    assert -(2**63) <= text_group_id("lung") < 2**63


# ------------------------------------------------------------------------------------- transforms

def test_volume_transform_windows_hu_and_crops_around_the_anatomies():
    vol = np.full((40, 30, 24), -2000.0, dtype=np.float32)
    vol[0, 0, 0], vol[1, 0, 0], vol[2, 0, 0] = -1150.0, 350.0, -400.0
    labels = np.zeros(vol.shape, dtype=np.int64)
    labels[28:36, 10:20, 2:8] = 3  # anatomies near the high-x end
    vol[28:36, 10:20, 2:8] = 1000.0
    out, lab = VolumeTransform([16, 32, 16])(vol, labels, np.eye(4))
    assert out.shape == (1, 16, 32, 16) and lab.shape == (16, 32, 16) and lab.dtype == torch.int64
    assert out.min() >= 0 and out.max() <= 1
    # x window [24, 40) (centre 32, clamped inside), y padded 30 -> 32 (1 each side), z [0, 16)
    assert torch.equal(lab, torch.as_tensor(np.pad(labels[24:40, :, 0:16], ((0, 0), (1, 1), (0, 0)))))
    assert (out[0][lab == 3] == 1.0).all()  # 1000 HU is above the window: clipped to 1
    raw = VolumeTransform([40, 30, 24])(vol, labels)[0][0]
    assert raw[0, 0, 0] == 0.0 and raw[1, 0, 0] == 1.0 and raw[2, 0, 0] == pytest.approx(0.5)


def test_volume_transform_reorients_to_ras():
    vol = np.full((8, 8, 8), -1150.0, dtype=np.float32)
    vol[0, 0, 0] = 350.0
    labels = np.ones((8, 8, 8), dtype=np.int64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel axes towards Left, Posterior: flipped to RAS
    out, _ = VolumeTransform([8, 8, 8])(vol, labels, lps)
    assert out[0, 7, 7, 0] == 1.0 and out[0, 0, 0, 0] == 0.0


def test_foreground_window_centres_and_clamps():
    mask = torch.zeros(20, 20, 20, dtype=torch.bool)
    mask[2:6, 8:12, 15:19] = True
    start, end = foreground_window(mask, [8, 8, 8])
    assert start == [0, 6, 12] and end == [8, 14, 20]
    assert foreground_window(torch.zeros(10, 4, 4, dtype=torch.bool), [4, 8, 4]) == ([3, 0, 0], [7, 4, 4])


def test_volume_to_slices_radiological_orientation():
    vol = torch.zeros(1, 1, 4, 6, 3)
    vol[0, 0, 3, 5, 0] = 1.0  # most right (max x), most anterior (max y), slice 0
    slices = volume_to_slices(vol, image_size=6, stride=2, mean=(0, 0, 0), std=(1, 1, 1))
    assert slices.shape == (1, 2, 3, 6, 6)  # z = 0, 2 kept; resized 6 x 4 -> 6 x 6
    assert slices[0, 0, 0].argmax().item() == 0  # row 0 (anterior), column 0 (patient right)
    assert slices[0, 1].abs().sum() == 0


def test_image_transform_train_and_eval():
    image = np.full((40, 50, 3), 128, dtype=np.uint8)
    image[:, :25] = 0
    t = ImageTransform(32, brightness=0.2, contrast=0.2)
    a = t(image, np.random.default_rng(1))
    b = t(image, np.random.default_rng(1))
    c = t(image, np.random.default_rng(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    ev = ImageTransform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image[:, :, 0])
    assert ev.shape == (3, 32, 32) and ev[0, 16, 0] == pytest.approx(-1.0) and ev[0, 16, -1] == pytest.approx(
        128 / 255 * 2 - 1, abs=1e-4)


# ----------------------------------------------------------------------------- optimiser, schedule

def test_weight_decay_groups():
    model = build_model("conceptclip", clip_model=TINY_CLIP)
    exempt = no_weight_decay_names(model)
    for name in ("logit_scale", "logit_bias", "concept_logit_scale", "text.tower.token_embedding.weight",
                 "text.tower.positional_embedding", "image.tower.class_embedding",
                 "image.tower.ln_post.weight", "image.tower.transformer.resblocks.0.attn.in_proj_bias",
                 "image_proj.fc1.bias"):
        assert name in exempt, name
    for name in ("image.tower.transformer.resblocks.0.attn.in_proj_weight", "image_proj.fc1.weight",
                 "text.tower.text_projection", "image.tower.conv1.weight"):
        assert name not in exempt, name
    decay, no_decay = parameter_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20) == 0.25 and warmup_cosine(3, 4, 20) == 1.0
    assert warmup_cosine(4, 4, 20) == 1.0 and warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert all(warmup_cosine(s, 4, 20) >= warmup_cosine(s + 1, 4, 20) for s in range(4, 20))
    assert warmup_cosine(5, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_rng_state_round_trip_through_a_weights_only_file():
    torch.manual_seed(5)
    np.random.seed(5)
    state = capture_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.manual_seed(0)
    np.random.seed(0)
    restore_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]
