"""Near-duplicate figures by perceptual hash, within a split and against the evaluation splits.

Every kept figure gets a 64-bit DCT perceptual hash (``imagehash.phash`` of the decoded image). Two
figures are duplicates when the Hamming distance of their hashes is ``<= max_distance``. Figures are
visited in priority order (test, then val, then train; by id within a split); a figure duplicating
an already *kept* figure is removed:

- ``duplicate``: the kept one is in the same split (the first by id stays);
- ``near_duplicate_of_eval``: the kept one is in a higher-priority (evaluation) split, so training
  never sees a near copy of a val/test image and val never sees a near copy of a test image.

Afterwards no two kept figures are within ``max_distance`` of each other. The pairwise distances are
computed in row blocks of ``[block, N]`` (XOR + popcount on packed ``uint64``), never as Python loops
over pairs: 4,000 figures take well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

__all__ = ["Removal", "deduplicate", "hamming_distances", "near_pairs", "phash64", "popcount64",
           "score_dedup"]

#: Lower value = kept first when duplicates straddle splits.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash64(image: np.ndarray) -> int:
    """64-bit perceptual hash of a ``uint8 [H, W]`` or ``[H, W, 3]`` image, as an int (bit 63 first).

    ``f"{phash64(x):016x}"`` equals ``str(imagehash.phash(Image.fromarray(x)))``.
    """
    bits = imagehash.phash(Image.fromarray(image)).hash.reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each ``uint64`` element; same shape, ``uint8``."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8, copy=False)
    return _BYTE_POPCOUNT[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances ``uint8 [N, M]`` between packed hashes ``a`` ``[N]`` and ``b`` ``[M]``."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    return popcount64(a[:, None] ^ b[None, :])


def near_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, with Hamming distance ``<= max_distance``.

    Args:
        hashes: ``uint64 [N]`` packed hashes.
        max_distance: threshold in bits.
        block: rows per block; memory is ``O(block * N)``.

    Returns:
        ``int64 [P, 3]``: ``(i, j, distance)`` rows sorted by ``i`` then ``j``.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n, out = len(h), []
    for start in range(0, n, block):
        d = hamming_distances(h[start:start + block], h)
        rows = np.arange(start, min(start + block, n))[:, None]
        i, j = np.nonzero((d <= max_distance) & (np.arange(n)[None, :] > rows))
        out.append(np.stack([i + start, j, d[i, j]], axis=1).astype(np.int64))
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


@dataclass(frozen=True)
class Removal:
    """A figure removed as a duplicate of the kept figure ``duplicate_of`` (``distance`` bits apart)."""

    id: str
    reason: str            # "duplicate" | "near_duplicate_of_eval"
    duplicate_of: str
    distance: int


def deduplicate(ids: Sequence[str], splits: Sequence[str], hashes: Sequence[int] | np.ndarray,
                max_distance: int, block: int = 1024) -> dict[str, Removal]:
    """Decide which figures to remove (see the module docstring).

    Args:
        ids: ``[N]`` unique figure ids.
        splits: ``[N]`` split names (``train`` / ``val`` / ``test``).
        hashes: ``[N]`` 64-bit hashes (ints or ``uint64``).
        max_distance: Hamming threshold in bits (0 = identical hashes only).

    Returns:
        ``{removed id: Removal}``; figures not in it are kept.
    """
    n = len(ids)
    if not (len(splits) == n == len(hashes)):
        raise ValueError(f"deduplicate: {n} ids, {len(splits)} splits, {len(hashes)} hashes; "
                         "lengths must match")
    unknown = sorted(set(splits) - set(SPLIT_PRIORITY))
    if unknown:
        raise ValueError(f"deduplicate: unknown split names {unknown}; use {sorted(SPLIT_PRIORITY)}")
    order = sorted(range(n), key=lambda k: (SPLIT_PRIORITY[splits[k]], ids[k]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for i, j, d in near_pairs(np.asarray(hashes, dtype=np.uint64), max_distance, block).tolist():
        neighbours.setdefault(i, []).append((j, d))
        neighbours.setdefault(j, []).append((i, d))
    kept = np.zeros(n, dtype=bool)
    removed: dict[str, Removal] = {}
    for k in order:
        earlier = [(int(rank[v]), v, d) for v, d in neighbours.get(k, ()) if kept[v]]
        if not earlier:
            kept[k] = True
            continue
        _, v, d = min(earlier)
        reason = "duplicate" if splits[v] == splits[k] else "near_duplicate_of_eval"
        removed[ids[k]] = Removal(ids[k], reason, ids[v], int(d))
    return removed


def _root(fid: str, duplicate_of: Mapping[str, str | None]) -> str:
    seen = {fid}
    while (nxt := duplicate_of.get(fid)) and nxt not in seen:
        seen.add(nxt)
        fid = nxt
    return fid


def score_dedup(removed: Mapping[str, Removal], duplicate_of: Mapping[str, str | None],
                considered: Sequence[str]) -> dict:
    """Precision / recall of the removals against the truth ``duplicate_of`` links.

    Truth groups are the chains of ``duplicate_of``; a group with ``k`` members among ``considered``
    calls for ``k - 1`` removals. A removal is correct when the removed figure and the figure it was
    matched to are in the same truth group.

    Returns:
        ``{"precision", "recall", "tp", "fp", "fn", "removed", "expected"}``.
    """
    pool = set(considered)
    groups: dict[str, int] = {}
    for fid in pool:
        root = _root(fid, duplicate_of)
        groups[root] = groups.get(root, 0) + 1
    expected = sum(k - 1 for k in groups.values())
    tp = sum(_root(r.id, duplicate_of) == _root(r.duplicate_of, duplicate_of) for r in removed.values())
    fp = len(removed) - tp
    return {"precision": tp / len(removed) if removed else 1.0,
            "recall": tp / expected if expected else 1.0,
            "tp": tp, "fp": fp, "fn": expected - tp, "removed": len(removed), "expected": expected}
