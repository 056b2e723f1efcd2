"""Deterministic group-level train / val / test split.

Each group (an article for figures, a patient for CT) goes to one split, decided by a hash of
``(seed, group id)`` alone: the split of a group never changes when other groups are added or
removed, no group is in two splits, and the result is the same on every machine and Python run
(SHA-256, not Python's salted ``hash``). Split sizes are the fractions in expectation, not exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

__all__ = ["SPLIT_NAMES", "assign_splits", "group_unit", "split_of", "validate_fractions"]

#: The split names, in the order the fractions are laid out on [0, 1).
SPLIT_NAMES = ("train", "val", "test")


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check ``fractions`` (keys among train/val/test, non-negative, summing to 1); absent ones get 0."""
    unknown = sorted(set(fractions) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"split fractions: unknown split names {unknown}; use {list(SPLIT_NAMES)}")
    out = {name: float(fractions.get(name, 0.0)) for name in SPLIT_NAMES}
    if any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {dict(fractions)} must be non-negative and sum to 1")
    return out


def group_unit(seed: int, group_id: str) -> float:
    """A uniform number in ``[0, 1)`` from SHA-256 of ``"{seed}:{group_id}"`` (first 8 bytes)."""
    digest = hashlib.sha256(f"{int(seed)}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(group_id: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """The split of one group: ``train`` / ``val`` / ``test`` by where :func:`group_unit` falls."""
    fr = validate_fractions(fractions)
    u, upper = group_unit(seed, group_id), 0.0
    for name in SPLIT_NAMES:
        upper += fr[name]
        if u < upper:
            return name
    return next(name for name in reversed(SPLIT_NAMES) if fr[name] > 0)   # u within rounding of 1


def assign_splits(group_ids: Sequence[str], fractions: Mapping[str, float], seed: int = 0) -> list[str]:
    """Split name of each item, given its group id ``[N]`` -> ``[N]`` (items of one group share it)."""
    validate_fractions(fractions)
    by_group = {g: split_of(g, fractions, seed) for g in dict.fromkeys(group_ids)}
    return [by_group[g] for g in group_ids]
