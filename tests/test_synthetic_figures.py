"""The synthetic 2D figure-caption corpus: determinism, files, masks, caption conventions, truth."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medvlp.data.synthetic._render2d import PAINTERS, RGB_MODALITIES, render_panel
from medvlp.data.synthetic.figures import BAD_RECORD_REASONS, generate_figures
from medvlp.lexicon import load_concept_lexicon

N = 60
SEED = 3
LEX = load_concept_lexicon()
FORMS = {f.lower(): c.id for c in LEX.concepts for f in c.surface_forms}
# Reference matcher of TEXT_CONVENTIONS.md: word boundaries, any case, optional plural "s", longest wins.
MENTION = re.compile(r"(?<!\w)(" + "|".join(re.escape(f) for f in sorted(FORMS, key=len, reverse=True))
                     + r")(?=s?(?!\w))", re.IGNORECASE)
PRE_CUE = re.compile(r"\b(?:no|no evidence of|without|without evidence of|negative for|absence of|free of|"
                     r"ruled out for)\b", re.IGNORECASE)
POST_CUE = re.compile(r"s?\s+(?:is absent|was not seen|is not identified|was excluded)\b", re.IGNORECASE)
CLAUSE_END = re.compile(r"[.;:(]|\b(?:but|however|although|while|whereas|with)\b", re.IGNORECASE)
LABEL = re.compile(r"\([a-zA-Z]\)")


def _negated(text: str, start: int, end: int) -> bool:
    """NegEx as TEXT_CONVENTIONS.md states it: a pre-cue earlier in the clause, or a post-cue right after."""
    clause = max((m.end() for m in CLAUSE_END.finditer(text, 0, start)), default=0)
    return bool(PRE_CUE.search(text, clause, start)) or bool(POST_CUE.match(text, end))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "figures"
    summary = generate_figures(out, seed=SEED, n_figures=N, progress=False)
    lines = (out / "manifest.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    good = [json.loads(line.decode("utf-8")) for line in lines[:N]]
    truth = [json.loads(line) for line in (out / "figures_truth.jsonl").read_text("utf-8").splitlines()]
    return {"out": out, "summary": summary, "lines": lines[:-1], "good": good, "truth": truth,
            "by_id": {t["id"]: t for t in truth}, "records": {r["id"]: r for r in good}}


def test_regeneration_is_byte_identical_and_seeded(corpus, tmp_path):
    again = generate_figures(tmp_path / "a", seed=SEED, n_figures=N, progress=False)
    first, second = _tree(corpus["out"]), _tree(tmp_path / "a")
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert again == corpus["summary"]
    generate_figures(tmp_path / "b", seed=SEED + 1, n_figures=N, progress=False)
    assert (tmp_path / "b" / "manifest.jsonl").read_bytes() != (corpus["out"] / "manifest.jsonl").read_bytes()


def test_records_images_and_summary(corpus):
    good, truth, out, summary = corpus["good"], corpus["truth"], corpus["out"], corpus["summary"]
    ids = [r["id"] for r in good]
    assert ids == [f"F{i:06d}" for i in range(1, N + 1)]
    assert [t["id"] for t in truth] == ids
    assert len(corpus["lines"]) == N + len(BAD_RECORD_REASONS) == summary["n_records"]
    modalities = {m.id for m in LEX.modalities}
    assert {r["modality"] for r in good} == modalities
    assert summary["modalities"] == {m: sum(r["modality"] == m for r in good) for m in modalities}
    for r, t in zip(good, truth):
        assert set(r) <= {"id", "image", "caption", "article_id", "modality", "concepts"}
        assert re.fullmatch(r"PMC\d{7}", r["article_id"]) and r["caption"].strip()
        assert t["modality"] == r["modality"]
        with Image.open(out / r["image"]) as im:
            assert im.size == (128, 128)
            assert im.mode == ("RGB" if r["modality"] in RGB_MODALITIES else "L")
            assert im.format == ("JPEG" if r["image"].endswith(".jpg") else "PNG")
    sizes = np.unique([r["article_id"] for r in good], return_counts=True)[1]
    assert sizes.min() >= 1 and sizes.max() <= 4 and len(sizes) == summary["n_articles"]
    assert summary["n_compound"] == sum(bool(t["panels"]) for t in truth) >= 1
    assert summary["n_normal"] == sum(not t["findings"] for t in truth) >= 1


def test_masks_mark_every_finding(corpus):
    for t in corpus["truth"]:
        with Image.open(corpus["out"] / t["mask"]) as im:
            assert im.mode == "L" and im.size == (128, 128)
            mask = np.asarray(im)
        assert sorted(np.unique(mask).tolist()) == list(range(len(t["findings"]) + 1)), t["id"]
        assert len(set(t["findings"])) == len(t["findings"])
        for i, cid in enumerate(t["findings"], start=1):
            assert t["modality"] in LEX.concept(cid).modalities
            assert (mask == i).sum() >= 6, (t["id"], cid)


@pytest.mark.parametrize("modality", sorted(PAINTERS))
def test_each_concept_is_a_local_visible_change(modality):
    """Same generator state with and without a finding: pixels change only around its mask, clearly."""
    assert sorted(PAINTERS[modality]) == sorted(c.id for c in LEX.for_modality(modality))
    for cid in PAINTERS[modality]:
        for seed, shape in ((0, (128, 128)), (1, (128, 64)), (2, (128, 128))):
            base = render_panel(modality, [], np.random.default_rng(seed), shape)
            with_f = render_panel(modality, [cid], np.random.default_rng(seed), shape)
            assert with_f.findings == [cid], (modality, cid, seed)
            mask = with_f.labels == 1
            assert 6 <= mask.sum() <= 0.3 * mask.size, (cid, int(mask.sum()))
            diff = np.abs(with_f.pixels.astype(int) - base.pixels.astype(int))
            diff = diff.max(-1) if diff.ndim == 3 else diff
            changed = diff > 8
            assert (changed & ~ndimage.binary_dilation(mask, iterations=6)).sum() <= 0.1 * changed.sum()
            assert diff[mask].mean() >= 10, (cid, float(diff[mask].mean()))


def test_mention_spans_are_exact_and_complete(corpus):
    for r, t in zip(corpus["good"], corpus["truth"]):
        cap = r["caption"]
        for m in t["mentions"]:
            assert FORMS.get(cap[m["start_char"]:m["end_char"]].lower()) == m["concept_id"], (r["id"], m)
        found = [(m.start(1), m.end(1), FORMS[m.group(1).lower()]) for m in MENTION.finditer(cap)]
        assert found == [(m["start_char"], m["end_char"], m["concept_id"]) for m in t["mentions"]], cap


def test_negation_flags_follow_the_conventions(corpus):
    n_neg = 0
    for r, t in zip(corpus["good"], corpus["truth"]):
        for m in t["mentions"]:
            assert m["negated"] == _negated(r["caption"], m["start_char"], m["end_char"]), (r["caption"], m)
            n_neg += m["negated"]
    assert n_neg >= N // 4


def test_present_findings_are_affirmed_and_negations_are_absent(corpus):
    """Rule: every finding has a positive mention in its panel's (sub)caption; every positive mention is
    a finding of its panel; a negated concept is absent from the panel whose (sub)caption negates it, so
    it is in ``findings`` only when another panel has it (and affirms it)."""
    for t in corpus["truth"]:
        spans = [(s["start_char"], s["end_char"], p["findings"])
                 for s, p in zip(t["subcaptions"], t["panels"])] or [(0, 10**9, t["findings"])]
        for start, end, findings in spans:
            inside = [m for m in t["mentions"] if start <= m["start_char"] < end]
            assert {m["concept_id"] for m in inside if not m["negated"]} == set(findings), t["id"]
            assert not {m["concept_id"] for m in inside if m["negated"]} & set(findings), t["id"]
        positive = {m["concept_id"] for m in t["mentions"] if not m["negated"]}
        assert positive == set(t["findings"])


def test_compound_figures(corpus):
    compound = [(r, t) for r, t in zip(corpus["good"], corpus["truth"]) if t["panels"]]
    assert compound
    for r, t in zip(corpus["good"], corpus["truth"]):
        if not t["panels"]:
            assert t["subcaptions"] == [] and not LABEL.search(r["caption"])
    for r, t in compound:
        cap, subs = r["caption"], t["subcaptions"]
        assert [s["label"] for s in subs] in (["(a)", "(b)"], ["(A)", "(B)"])
        assert [m.start() for m in LABEL.finditer(cap)] == [s["start_char"] for s in subs]
        assert all(cap.startswith(s["label"], s["start_char"]) for s in subs)
        assert subs[0]["end_char"] == subs[1]["start_char"] and subs[1]["end_char"] == len(cap)
        assert [p["box"] for p in t["panels"]] == [[0, 0, 64, 128], [64, 0, 128, 128]]
        assert [p["label"] for p in t["panels"]] == [s["label"] for s in subs]
        assert sorted({c for p in t["panels"] for c in p["findings"]}) == sorted(t["findings"])
        mask = np.asarray(Image.open(corpus["out"] / t["mask"]))
        for p in t["panels"]:
            x0, y0, x1, y1 = p["box"]
            values = set(np.unique(mask[y0:y1, x0:x1]).tolist()) - {0}
            assert values == {t["findings"].index(c) + 1 for c in p["findings"]}


def test_given_concepts_are_the_positive_mentions(corpus):
    given = [(r, corpus["by_id"][r["id"]]) for r in corpus["good"] if "concepts" in r]
    assert 0.1 * N <= len(given) <= 0.45 * N
    for r, t in given:
        assert not t["panels"]
        assert r["concepts"] == [{"concept_id": m["concept_id"], "start_char": m["start_char"],
                                  "end_char": m["end_char"]} for m in t["mentions"] if not m["negated"]]


def test_duplicates_point_to_their_originals(corpus):
    out, by_id, records = corpus["out"], corpus["by_id"], corpus["records"]
    dups = [t for t in corpus["truth"] if t["duplicate_of"]]
    s = corpus["summary"]
    assert len(dups) == s["n_exact_duplicates"] + s["n_near_duplicates"] and s["n_exact_duplicates"] >= 1
    assert s["n_near_duplicates"] >= 1
    n_exact = 0
    for t in dups:
        orig = by_id[t["duplicate_of"]]
        rec, orig_rec = records[t["id"]], records[orig["id"]]
        assert orig["duplicate_of"] is None and orig["id"] < t["id"]
        assert orig["findings"] == t["findings"] and orig["modality"] == t["modality"]
        assert rec["article_id"] != orig_rec["article_id"] and rec["caption"] != orig_rec["caption"]
        a, b = (out / rec["image"]).read_bytes(), (out / orig_rec["image"]).read_bytes()
        mask, orig_mask = (np.asarray(Image.open(out / x["mask"])) for x in (t, orig))
        if a == b:
            n_exact += 1
            assert np.array_equal(mask, orig_mask)
        else:
            pa = np.asarray(Image.open(out / rec["image"])).astype(float)
            pb = np.asarray(Image.open(out / orig_rec["image"])).astype(float)
            assert 0 < np.abs(pa - pb).mean() < 25
            assert set(np.unique(mask).tolist()) == set(np.unique(orig_mask).tolist())
    assert n_exact == s["n_exact_duplicates"]


def test_bad_records_are_planted(corpus):
    out, lines, summary = corpus["out"], corpus["lines"], corpus["summary"]
    bad = summary["bad_records"]
    assert [b["reason"] for b in bad] == list(BAD_RECORD_REASONS)
    assert [b["line"] for b in bad] == list(range(N + 1, N + len(BAD_RECORD_REASONS) + 1))
    by_reason = {b["reason"]: lines[b["line"] - 1] for b in bad}
    with pytest.raises(UnicodeDecodeError):
        by_reason["invalid_utf8"].decode("utf-8")
    rec = {k: json.loads(v) for k, v in by_reason.items() if k != "invalid_utf8"}
    assert not (out / rec["missing_image"]["image"]).exists()
    truncated = out / rec["truncated_image"]["image"]
    assert truncated.stat().st_size == 100 and truncated.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(OSError):
        Image.open(truncated).load()
    assert rec["empty_caption"]["caption"] == "" and (out / rec["empty_caption"]["image"]).is_file()
    assert rec["path_outside_corpus"]["image"] == "../outside.png"
    assert rec["absolute_path"]["image"] == "/etc/passwd"
    dup = rec["duplicate_id"]
    assert dup["id"] in corpus["records"] and dup["caption"] != corpus["records"][dup["id"]]["caption"]
    planted = {b["id"] for b in bad if b["reason"] != "duplicate_id"}
    assert not planted & set(corpus["by_id"])


def test_too_small_corpus_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_figures=5"):
        generate_figures(tmp_path, n_figures=5, progress=False)
