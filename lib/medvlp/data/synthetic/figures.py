"""The synthetic 2D figure-caption corpus (``data/figures``), deterministic from a seed.

``generate_figures(out_dir, seed=0, n_figures=4000)`` writes, under ``out_dir``:

- ``manifest.jsonl``: one record per figure (``id``, ``image``, ``caption``, ``article_id``,
  ``modality``; about 25 % of one-panel records also ``concepts``: the positive mention spans, as
  MedConcept-23M ships them), then 7 deliberately bad records (see :data:`BAD_RECORD_REASONS`);
- ``figures_truth.jsonl``: per good figure the findings, every mention with its negation, the
  compound sub-captions and panels, the mask path and ``duplicate_of`` (format in ``data/README.md``);
- ``images/F000001.png`` (128 x 128, "L" for chest X-ray / CT / MRI, "RGB" for fundus / dermoscopy /
  histopathology; some near duplicates as ``.jpg``) and ``masks/F000001.png`` (label maps).

Figure kinds: one-panel figures with 0-3 findings; about 10 % compound figures (two 128 x 64 panels
side by side, caption "(a) ... (b) ..."); about 3 % exact duplicates (same image bytes, new id,
article and caption wording) and 3 % near duplicates (brightness change plus a 1-2 px shift or
crop-resize, re-encoded, sometimes as JPEG quality 90). Articles group 1-4 consecutive figures.

Determinism: every figure draws from its own ``np.random.SeedSequence(seed, spawn_key=(1, index))``
(the corpus plan from ``spawn_key=(0,)``), so records do not depend on one another; float64 numpy
only; JSON with sorted keys; PNG via Pillow without metadata at a fixed compression level. The
bytes are identical wherever the pinned numpy / Pillow (and its zlib / libjpeg) versions are.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medvlp.data.synthetic._captions import Caption, CaptionWriter, PanelText
from medvlp.data.synthetic._render2d import PAINTERS, Panel, render_panel
from medvlp.lexicon import load_concept_lexicon

__all__ = ["BAD_RECORD_REASONS", "generate_figures"]

IMAGE_SIZE = 128
PANEL_WIDTH = 64
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90
MIN_FIGURES = 12

FRACTION_COMPOUND = 0.10
FRACTION_EXACT_DUPLICATES = 0.03
FRACTION_NEAR_DUPLICATES = 0.03
FRACTION_GIVEN_CONCEPTS = 0.25
FINDINGS_PER_FIGURE = (0.2, 0.4, 0.28, 0.12)      # P(0), P(1), P(2), P(3) findings in a one-panel figure
FINDINGS_PER_PANEL = (0.3, 0.45, 0.25)            # the same for a panel of a compound figure
ARTICLE_SIZES = (0.4, 0.3, 0.2, 0.1)              # P(1..4 figures per article)

#: The deliberately bad records appended to the manifest, in this order (curation must skip them).
BAD_RECORD_REASONS = ("missing_image", "truncated_image", "empty_caption", "invalid_utf8",
                      "path_outside_corpus", "absolute_path", "duplicate_id")

_BAD_UTF8_MARK = "@@NON_UTF8_CAPTION@@"
_BAD_UTF8_BYTES = b"Radiographie thoracique de face, r\xe9sum\xe9 des constatations."


def _figure_id(i: int) -> str:
    return f"F{i + 1:06d}"


def _article_id(k: int) -> str:
    return f"PMC{1000001 + k:07d}"


@dataclass(frozen=True)
class _Plan:
    """What figure ``index`` is: its modality, kind, source (for a duplicate) and article."""

    index: int
    modality: str
    kind: str                 # "single" | "compound" | "exact_duplicate" | "near_duplicate"
    article: int
    source: int | None
    given_concepts: bool


def _plan(seed: int, n: int, modalities: tuple[str, ...]) -> list[_Plan]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_mod = len(modalities)
    blocks = [rng.permutation(n_mod) for _ in range(-(-n // n_mod))]
    mods = [modalities[int(k)] for k in np.concatenate(blocks)[:n]]
    articles, k = [], 0
    while len(articles) < n:
        articles += [k] * int(rng.choice(4, p=ARTICLE_SIZES) + 1)
        k += 1
    articles = articles[:n]
    n_exact = max(1, round(FRACTION_EXACT_DUPLICATES * n))
    n_near = max(1, round(FRACTION_NEAR_DUPLICATES * n))
    n_comp = max(1, round(FRACTION_COMPOUND * n))
    lo = max(n_mod, n // 10)                      # duplicates come after their originals
    late = rng.permutation(np.arange(lo, n))
    kinds = ["single"] * n
    for j in late[:n_exact]:
        kinds[int(j)] = "exact_duplicate"
    for j in late[n_exact:n_exact + n_near]:
        kinds[int(j)] = "near_duplicate"
    rest = [i for i in rng.permutation(n) if kinds[int(i)] == "single"]
    for i in rest[:n_comp]:
        kinds[int(i)] = "compound"
    sources: list[int | None] = [None] * n
    for j in range(n):
        if kinds[j] not in ("exact_duplicate", "near_duplicate"):
            continue
        cand = [i for i in range(j) if kinds[i] == "single" and articles[i] != articles[j]]
        same = [i for i in cand if mods[i] == mods[j]]
        pool = same or cand
        if not pool:
            raise RuntimeError(f"no original available for duplicate figure {j}; use more figures")
        sources[j] = int(pool[rng.integers(len(pool))])
        mods[j] = mods[sources[j]]
    given = rng.random(n) < FRACTION_GIVEN_CONCEPTS
    return [_Plan(i, mods[i], kinds[i], articles[i], sources[i], bool(given[i]) and kinds[i] != "compound")
            for i in range(n)]


def _record_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent image and text generators of figure ``index`` (0-based)."""
    img, txt = np.random.SeedSequence(seed, spawn_key=(1, index)).spawn(2)
    return np.random.default_rng(img), np.random.default_rng(txt)


def _draw_concepts(rng: np.random.Generator, pool: tuple[str, ...], probs: tuple[float, ...]) -> list[str]:
    k = int(rng.choice(len(probs), p=probs))
    return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=2)
    return buf.getvalue()


def _json_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


@dataclass
class _Figure:
    """A rendered figure before writing: pixels, label map, findings and caption inputs."""

    pixels: np.ndarray
    labels: np.ndarray
    findings: list[str]
    panels: list[PanelText]
    panel_findings: list[list[str]]


def _single(plan: _Plan, rng: np.random.Generator, concepts: dict[str, tuple[str, ...]]) -> _Figure:
    cids = _draw_concepts(rng, concepts[plan.modality], FINDINGS_PER_FIGURE)
    p = render_panel(plan.modality, cids, rng, (IMAGE_SIZE, IMAGE_SIZE))
    text = PanelText(plan.modality, tuple(p.findings), p.centers, (IMAGE_SIZE, IMAGE_SIZE))
    return _Figure(p.pixels, p.labels, list(p.findings), [text], [])


def _compound(plan: _Plan, rng: np.random.Generator, concepts: dict[str, tuple[str, ...]]) -> _Figure:
    shape = (IMAGE_SIZE, PANEL_WIDTH)
    parts: list[Panel] = []
    for _ in range(IMAGE_SIZE // PANEL_WIDTH):
        cids = _draw_concepts(rng, concepts[plan.modality], FINDINGS_PER_PANEL)
        parts.append(render_panel(plan.modality, cids, rng, shape))
    union: list[str] = []
    for p in parts:
        union += [c for c in p.findings if c not in union]
    labels = []
    for p in parts:
        lut = np.zeros(256, dtype=np.uint8)
        for j, c in enumerate(p.findings, start=1):
            lut[j] = union.index(c) + 1
        labels.append(lut[p.labels])
    texts = [PanelText(plan.modality, tuple(p.findings), p.centers, shape) for p in parts]
    return _Figure(np.concatenate([p.pixels for p in parts], axis=1), np.concatenate(labels, axis=1),
                   union, texts, [list(p.findings) for p in parts])


def _near_duplicate(pixels: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Brightness change plus a 1-2 px shift or a crop-resize; the label map follows the geometry."""
    h, w = labels.shape
    if rng.random() < 0.5:
        step = int(rng.choice((-2, -1, 1, 2)))
        dy, dx = (step, 0) if rng.random() < 0.5 else (0, step)
        pad = ((2, 2), (2, 2)) + (((0, 0),) if pixels.ndim == 3 else ())
        px = np.pad(pixels, pad, mode="edge")[2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
        lab = np.pad(labels, 2)[2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
    else:
        left, top, right, bottom = (int(v) for v in rng.permutation([1, int(rng.integers(0, 2)), 0, 0]))
        box = (left, top, w - right, h - bottom)
        px = np.asarray(Image.fromarray(pixels).crop(box).resize((w, h), Image.Resampling.BILINEAR))
        lab = np.asarray(Image.fromarray(labels).crop(box).resize((w, h), Image.Resampling.NEAREST))
    if set(np.unique(lab).tolist()) != set(np.unique(labels).tolist()):
        px, lab = pixels, labels                  # a finding fell off the edge: brightness change only
    gain = 1.0 + rng.choice((-1.0, 1.0)) * rng.uniform(0.03, 0.08)
    px = np.clip(np.round(px.astype(np.float64) * gain), 0, 255).astype(np.uint8)
    return px, np.ascontiguousarray(lab)


def _clear(out: Path) -> None:
    """Remove what a previous run wrote (only the corpus' own files and folders)."""
    for name in ("manifest.jsonl", "figures_truth.jsonl"):
        (out / name).unlink(missing_ok=True)
    for name in ("images", "masks"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def generate_figures(out_dir: Path, *, seed: int = 0, n_figures: int = 4000, progress: bool = True) -> dict:
    """Write the synthetic figure corpus into ``out_dir`` and return summary counts.

    Args:
        out_dir: the corpus folder (``data/figures``); its ``manifest.jsonl``, ``figures_truth.jsonl``,
            ``images/`` and ``masks/`` are replaced, nothing else in it is touched.
        seed: corpus seed; the same seed gives byte-identical files.
        n_figures: number of good figures (ids ``F000001`` ...), at least 12; the 7 bad records come on top.
        progress: show a tqdm progress bar.

    Returns:
        ``{"n_figures", "n_records", "n_compound", "n_exact_duplicates", "n_near_duplicates", "n_jpeg",
        "n_given_concepts", "n_articles", "n_normal", "modalities": {id: n}, "concepts": {id: n figures},
        "bad_records": [{"line", "id", "reason"}]}`` (``line`` is 1-based in ``manifest.jsonl``).
    """
    if n_figures < MIN_FIGURES:
        raise ValueError(f"n_figures={n_figures}: need at least {MIN_FIGURES} figures so that every "
                         "modality, a compound figure and both kinds of duplicate occur")
    lexicon = load_concept_lexicon()
    concepts = {m.id: tuple(c.id for c in lexicon.for_modality(m.id)) for m in lexicon.modalities}
    for m, cids in concepts.items():
        missing = [c for c in cids if c not in PAINTERS.get(m, {})]
        if missing:
            raise ValueError(f"concepts.json: concepts {missing} of modality {m!r} have no 2D painter")
    modalities = tuple(m.id for m in lexicon.modalities)
    writer = CaptionWriter(lexicon)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    (out / "images").mkdir()
    (out / "masks").mkdir()

    plan = _plan(seed, n_figures, modalities)
    needed = {p.source for p in plan if p.source is not None}
    cache: dict[int, tuple[_Figure, bytes, bytes]] = {}
    manifest_lines: list[bytes] = []
    truth_lines: list[bytes] = []
    summary = {"n_figures": n_figures, "n_compound": 0, "n_exact_duplicates": 0, "n_near_duplicates": 0,
               "n_jpeg": 0, "n_given_concepts": 0, "n_normal": 0,
               "modalities": dict.fromkeys(modalities, 0), "concepts": {c.id: 0 for c in lexicon.concepts}}

    for p in tqdm(plan, desc="figures", unit="fig", disable=not progress):
        fid = _figure_id(p.index)
        img_rng, txt_rng = _record_rngs(seed, p.index)
        ext, duplicate_of = "png", None
        if p.kind in ("single", "compound"):
            fig = (_single if p.kind == "single" else _compound)(p, img_rng, concepts)
            image_bytes, mask_bytes = _png(fig.pixels), _png(fig.labels)
            if p.index in needed:
                cache[p.index] = (fig, image_bytes, mask_bytes)
        else:
            src, src_image, src_mask = cache[p.source]
            duplicate_of = _figure_id(p.source)
            if p.kind == "exact_duplicate":
                fig, image_bytes, mask_bytes = src, src_image, src_mask
            else:
                px, lab = _near_duplicate(src.pixels, src.labels, img_rng)
                fig = _Figure(px, lab, src.findings, src.panels, src.panel_findings)
                ext = "jpg" if img_rng.random() < 0.4 else "png"
                image_bytes = _jpeg(px) if ext == "jpg" else _png(px)
                mask_bytes = _png(lab)
                summary["n_jpeg"] += ext == "jpg"
            summary["n_exact_duplicates" if p.kind == "exact_duplicate" else "n_near_duplicates"] += 1
        if p.kind == "compound":
            cap = writer.compound(txt_rng, fig.panels)
            summary["n_compound"] += 1
        else:
            cap = writer.single(txt_rng, fig.panels[0])

        image_path, mask_path = f"images/{fid}.{ext}", f"masks/{fid}.png"
        (out / image_path).write_bytes(image_bytes)
        (out / mask_path).write_bytes(mask_bytes)
        record = {"id": fid, "image": image_path, "caption": cap.text, "article_id": _article_id(p.article),
                  "modality": p.modality}
        if p.given_concepts:
            record["concepts"] = [{"concept_id": m["concept_id"], "start_char": m["start_char"],
                                   "end_char": m["end_char"]} for m in cap.mentions if not m["negated"]]
            summary["n_given_concepts"] += 1
        manifest_lines.append(_json_line(record))
        truth_lines.append(_json_line(_truth(fid, p, fig, cap, mask_path, duplicate_of)))
        summary["modalities"][p.modality] += 1
        summary["n_normal"] += not fig.findings
        for c in fig.findings:
            summary["concepts"][c] += 1

    bad_lines, bad = _bad_records(out, seed, n_figures, writer, modalities, plan[0].modality,
                                  first_line=len(manifest_lines) + 1)
    (out / "manifest.jsonl").write_bytes(b"".join(manifest_lines + bad_lines))
    (out / "figures_truth.jsonl").write_bytes(b"".join(truth_lines))
    summary["n_records"] = len(manifest_lines) + len(bad_lines)
    summary["n_articles"] = len({p.article for p in plan})
    summary["bad_records"] = bad
    return summary


def _truth(fid: str, plan: _Plan, fig: _Figure, cap: Caption, mask_path: str, duplicate_of: str | None
           ) -> dict:
    panels = []
    if plan.kind == "compound" or len(fig.panels) > 1:
        for j, (sub, found) in enumerate(zip(cap.subcaptions, fig.panel_findings)):
            panels.append({"label": sub["label"], "modality": plan.modality, "findings": found,
                           "box": [j * PANEL_WIDTH, 0, (j + 1) * PANEL_WIDTH, IMAGE_SIZE]})
    return {"id": fid, "modality": plan.modality, "findings": list(fig.findings),
            "mentions": sorted(cap.mentions, key=lambda m: m["start_char"]),
            "subcaptions": cap.subcaptions, "mask": mask_path, "duplicate_of": duplicate_of, "panels": panels}


def _bad_records(out: Path, seed: int, n: int, writer: CaptionWriter, modalities: tuple[str, ...],
                 first_modality: str, first_line: int) -> tuple[list[bytes], list[dict]]:
    """The 7 deliberately bad manifest records (no truth records), their lines and reasons."""
    lines: list[bytes] = []
    bad: list[dict] = []
    for k, reason in enumerate(BAD_RECORD_REASONS):
        index = n + k
        img_rng, txt_rng = _record_rngs(seed, index)
        modality = modalities[k % len(modalities)]
        fid = _figure_id(index)
        panel = render_panel(modality, [], img_rng, (IMAGE_SIZE, IMAGE_SIZE))
        caption = writer.single(txt_rng, PanelText(modality, (), {}, (IMAGE_SIZE, IMAGE_SIZE))).text
        image = f"images/{fid}.png"
        if reason == "missing_image":
            pass                                                   # the file is never written
        elif reason == "truncated_image":
            (out / image).write_bytes(_png(panel.pixels)[:100])
        elif reason in ("empty_caption", "invalid_utf8"):
            (out / image).write_bytes(_png(panel.pixels))
            caption = "" if reason == "empty_caption" else _BAD_UTF8_MARK
        elif reason == "path_outside_corpus":
            image = "../outside.png"
        elif reason == "absolute_path":
            image = "/etc/passwd"
        elif reason == "duplicate_id":
            fid, image, modality = _figure_id(0), "images/" + _figure_id(0) + ".png", first_modality
        record = {"id": fid, "image": image, "caption": caption, "article_id": _article_id(10 * n + k),
                  "modality": modality}
        line = _json_line(record)
        if reason == "invalid_utf8":
            line = line.replace(_BAD_UTF8_MARK.encode(), _BAD_UTF8_BYTES)
        lines.append(line)
        bad.append({"line": first_line + k, "id": fid, "reason": reason})
    return lines, bad
