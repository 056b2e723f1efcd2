"""Splitting compound figure captions into panel sub-captions."""

from __future__ import annotations

from medvlp.curate.compound_captions import SubCaption, split_compound_caption


def panels(caption: str) -> list[tuple[str | None, str]]:
    subs = split_compound_caption(caption)
    for s in subs:
        assert caption[s.start:s.end] == s.text
    return [(s.label, s.text) for s in subs]


def test_two_panels_with_lead_text():
    caption = "Chest X-rays of two patients. (a) Pleural effusion. (b) Normal chest film."
    subs = split_compound_caption(caption)
    assert subs == [SubCaption("a", 34, 51, "Pleural effusion."),
                    SubCaption("b", 56, 74, "Normal chest film.")]


def test_upper_case_labels_are_lower_cased():
    assert panels("(A) CT scan.  (B) Brain MRI.  (C) Fundus photograph. ") == [
        ("a", "CT scan."), ("b", "Brain MRI."), ("c", "Fundus photograph.")]


def test_last_panel_runs_to_the_end():
    caption = "(a) Melanoma. (b) Naevus. Reprinted with permission.  "
    assert panels(caption)[-1] == ("b", "Naevus. Reprinted with permission.")


def test_label_followed_directly_by_text():
    assert panels("(a)CT scan (b)MRI") == [("a", "CT scan"), ("b", "MRI")]


def test_lone_label_is_not_compound():
    assert split_compound_caption("(a) Chest X-ray with a pleural effusion.") == []
    assert split_compound_caption("Chest X-ray with a pleural effusion.") == []
    assert split_compound_caption("") == []


def test_labels_out_of_sequence_are_not_compound():
    assert split_compound_caption("(a) CT scan. (c) MRI.") == []
    assert split_compound_caption("(b) CT scan. (c) MRI.") == []
    assert split_compound_caption("(a) CT scan. (B) MRI.") == []      # one letter case per sequence


def test_label_off_the_sequence_stays_text():
    assert panels("(a) CT. (b) MRI (d) inset. (c) X-ray.") == [
        ("a", "CT."), ("b", "MRI (d) inset."), ("c", "X-ray.")]


def test_label_glued_to_a_word_is_not_a_label():
    assert split_compound_caption("The function f(a) and g(b) are shown.") == []


def test_non_ascii_noise_keeps_offsets():
    caption = "Two H&E-stained sections, ×400.  (a) Necrosis; scale bar, 50 µm. (b) Mitoses – café."
    assert panels(caption) == [("a", "Necrosis; scale bar, 50 µm."), ("b", "Mitoses – café.")]


def test_empty_panel_kept_aligned():
    subs = split_compound_caption("(a) (b) Two views of the lesion.")
    assert [(s.label, s.start, s.end, s.text) for s in subs] == [
        ("a", 3, 3, ""), ("b", 8, 32, "Two views of the lesion.")]
