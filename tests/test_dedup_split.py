"""Group-level split (deterministic, stable, disjoint) and perceptual-hash de-duplication."""

import imagehash
import numpy as np
import pytest
from PIL import Image

from medvlp.curate import dedup
from medvlp.curate.dedup import deduplicate, hamming_distances, near_pairs, phash64, popcount64, score_dedup
from medvlp.curate.split import assign_splits, split_of, validate_fractions

FRACTIONS = {"train": 0.75, "val": 0.05, "test": 0.2}


# ---------------------------------------------------------------------------------------------- split

def test_split_is_deterministic_and_seeded():
    groups = [f"PMC{i}" for i in range(500)]
    a, b = assign_splits(groups, FRACTIONS, seed=0), assign_splits(groups, FRACTIONS, seed=0)
    assert a == b
    c = assign_splits(groups, FRACTIONS, seed=1)
    assert 0.2 < np.mean([x != y for x, y in zip(a, c)]) < 0.6


def test_split_is_stable_under_adding_and_removing_groups():
    base = [f"P{i}" for i in range(300)]
    alone = dict(zip(base, assign_splits(base, FRACTIONS, seed=3)))
    more = base[::2] + [f"NEW{i}" for i in range(200)]           # half removed, others added
    mixed = dict(zip(more, assign_splits(more, FRACTIONS, seed=3)))
    assert all(mixed[g] == alone[g] for g in base[::2])


def test_no_group_in_two_splits_and_fractions_respected():
    rng = np.random.default_rng(0)
    groups = [f"A{int(k)}" for k in rng.integers(0, 20000, size=60000)]   # many items per group
    splits = assign_splits(groups, FRACTIONS, seed=0)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        by_group.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in by_group.values())
    share = {s: np.mean([next(iter(v)) == s for v in by_group.values()]) for s in FRACTIONS}
    for s, f in FRACTIONS.items():
        assert abs(share[s] - f) < 0.015, (s, share[s])


def test_split_fraction_validation():
    assert validate_fractions({"train": 0.8, "test": 0.2}) == {"train": 0.8, "val": 0.0, "test": 0.2}
    assert split_of("x", {"train": 0.0, "val": 0.0, "test": 1.0}) == "test"
    with pytest.raises(ValueError, match="sum to 1"):
        validate_fractions({"train": 0.8, "val": 0.1, "test": 0.2})
    with pytest.raises(ValueError, match="unknown split names"):
        validate_fractions({"train": 0.5, "holdout": 0.5})


# ---------------------------------------------------------------------------------------------- dedup

def _smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A distinct low-frequency grey image (what perceptual hashes are made for)."""
    small = np.random.default_rng(seed).integers(0, 256, size=(6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _near_copy(img: np.ndarray) -> np.ndarray:
    """Brighter by 6 % and shifted by one pixel."""
    shifted = np.pad(img, 1, mode="edge")[:-2, 1:-1]
    return np.clip(np.round(shifted * 1.06), 0, 255).astype(np.uint8)


def test_phash64_matches_imagehash_and_popcount_fallback(monkeypatch):
    img = _smooth_image(0)
    assert f"{phash64(img):016x}" == str(imagehash.phash(Image.fromarray(img)))
    rgb = np.dstack([img] * 3)
    assert phash64(rgb) == phash64(img)
    x = np.random.default_rng(1).integers(0, 2**63, size=(5, 7), dtype=np.uint64) * np.uint64(2)
    x[0, 0] = np.uint64(2**64 - 1)
    expected = np.vectorize(lambda v: bin(int(v)).count("1"))(x)
    np.testing.assert_array_equal(popcount64(x), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(dedup.popcount64(x), expected)


def test_near_pairs_blocked_equals_brute_force():
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    h[10] = h[3] ^ np.uint64(0b1011)            # 3 bits apart
    h[40] = h[3]                                # identical
    h[25] = h[7] ^ np.uint64((1 << 7) - 1)      # 7 bits apart: over a threshold of 6
    d = hamming_distances(h, h)
    brute = {(i, j, int(d[i, j])) for i in range(50) for j in range(i + 1, 50) if d[i, j] <= 6}
    for block in (7, 50, 1024):
        got = near_pairs(h, 6, block=block)
        assert {tuple(map(int, row)) for row in got} == brute
    assert {(3, 10, 3), (3, 40, 0), (10, 40, 3)} <= brute and not any(p[:2] == (7, 25) for p in brute)


def test_dedup_planted_duplicates_within_and_across_splits():
    originals = [_smooth_image(s) for s in range(8)]
    images = originals + [originals[1].copy(), _near_copy(originals[2]), _near_copy(originals[5])]
    ids = [f"F{i:02d}" for i in range(len(images))]
    # F01 / F08 exact copies in train; F02 / F09 near copies in train; F05 (test) has a near copy F10
    # in train.
    splits = ["train", "train", "train", "val", "train", "test", "train", "train", "train", "train", "train"]
    hashes = [phash64(x) for x in images]
    removed = deduplicate(ids, splits, hashes, max_distance=6)
    assert set(removed) == {"F08", "F09", "F10"}
    assert removed["F08"].reason == "duplicate" and removed["F08"].duplicate_of == "F01"
    assert removed["F08"].distance == 0
    assert removed["F09"].reason == "duplicate" and removed["F09"].duplicate_of == "F02"
    assert 0 < removed["F09"].distance <= 6 and 0 < removed["F10"].distance <= 6       # near, not exact
    assert removed["F10"].reason == "near_duplicate_of_eval" and removed["F10"].duplicate_of == "F05"
    # The distinct originals are far apart, so nothing else goes.
    d = hamming_distances(np.array(hashes[:8], dtype=np.uint64), np.array(hashes[:8], dtype=np.uint64))
    assert d[~np.eye(8, dtype=bool)].min() > 6


def test_dedup_keeps_the_evaluation_copy_even_when_train_comes_first():
    img = _smooth_image(11)
    removed = deduplicate(["A", "B", "C"], ["train", "test", "val"], [phash64(img)] * 3, max_distance=0)
    assert {k: (v.reason, v.duplicate_of) for k, v in removed.items()} == {
        "A": ("near_duplicate_of_eval", "B"), "C": ("near_duplicate_of_eval", "B")}


def test_dedup_removes_only_against_kept_figures():
    # A - B - C chain: B is 4 bits from A and from C, A and C are 8 apart. B goes; C stays (A and C differ).
    a = np.uint64(0)
    b, c = a ^ np.uint64(0b1111), a ^ np.uint64(0b11111111)
    removed = deduplicate(["A", "B", "C"], ["train"] * 3, np.array([a, b, c]), max_distance=4)
    assert list(removed) == ["B"]


def test_score_dedup_against_truth_groups():
    removed = {"B": dedup.Removal("B", "duplicate", "A", 0), "D": dedup.Removal("D", "duplicate", "C", 5),
               "E": dedup.Removal("E", "near_duplicate_of_eval", "F", 2)}
    truth = {"A": None, "B": "A", "C": None, "D": None, "E": "F", "F": None, "G": "A"}
    got = score_dedup(removed, truth, list(truth))
    # expected removals: group A has A, B, G -> 2; group F has E, F -> 1. Correct: B, E. Wrong: D.
    assert got == {"precision": 2 / 3, "recall": 2 / 3, "tp": 2, "fp": 1, "fn": 1, "removed": 3,
                   "expected": 3}
