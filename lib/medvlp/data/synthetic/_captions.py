"""Caption writing for the synthetic figure corpus, following the project's text conventions.

A caption mentions every present finding positively (a surface form of its concept from
``resources/concepts.json``, any case, optional plural "s" outside the span), names the modality,
often negates a few absent concepts of the same modality (NegEx-style pre-cues "no", "no evidence
of", "without", "negative for", "absence of", "free of", "ruled out for", ... whose scope runs to the
end of the clause, or post-cues "is absent", "was not seen", "is not identified", "was excluded"
right after the mention), and may carry distractor sentences that name no concept, plus noise
(doubled spaces between sentences, non-ASCII characters, trailing whitespace). Compound captions
label panels "(a) ... (b) ..." (or upper case) after an optional lead sentence.

Positive mentions never follow a negation cue inside the same clause: a sentence that both negates
and affirms puts the affirmed finding first ("X is seen, without Y") or after a clause break
("No Y, but X is present"). Mention spans are recorded while the text is written, so they are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medvlp.lexicon import Concept, ConceptLexicon

# Surface forms whose plural is the form + "s" (other forms are never pluralised).
_PLURAL_HEADS = ("nodule", "lesion", "stone", "node", "plaque", "microaneurysm", "exudate", "figure", "cell",
                 "gland", "calcification", "infarct", "tumor", "glioma", "effusion")

_DISTRACTORS_COMMON = (
    "Reprinted with permission.",
    "Reprinted with permission from the publisher.",
    "Adapted from the original article under a CC BY 4.0 licence.",
    "Courtesy of Dr. Lefèvre.",
    "Image courtesy of the Département de Radiologie.",
    "Arrowheads mark the region of interest.",
    "Arrows indicate the area of interest.",
    "The asterisk marks the region shown at higher magnification.",
    "Follow-up was performed after 3–6 months.",
    "Case {n} of the series.",
    "The patient was {age_sex}.",
    "Images were acquired at our institution.",
    "The authors thank the technical staff for their help.",
)
_DISTRACTORS = {
    "chest_xray": ("Posteroanterior projection.", "Portable anteroposterior view.",
                   "Image obtained at full inspiration.", "Exposure 110 kVp, 2.5 mAs."),
    "ct_slice": ("Contrast-enhanced portal venous phase.", "Window width 400 HU, level 40 HU.",
                 "Slice thickness 1.25 mm.", "Matrix 512 × 512."),
    "brain_mri": ("TR/TE 9000/120 ms.", "Acquired at 3 T.", "Slice thickness 5 mm.",
                  "Voxel size 0.9 × 0.9 × 5 mm."),
    "fundus": ("Image captured with a 45° field of view.", "Right eye.", "Left eye.",
               "Non-mydriatic camera, flash intensity 2."),
    "dermoscopy": ("Polarised light, 10× magnification.", "Contact examination with immersion gel.",
                   "Lesion on the upper back.", "Lesion diameter 6–8 mm."),
    "histopathology": ("Scale bar, 50 µm.", "Scale bar, 100 µm.", "Original magnification ×400.",
                       "Haematoxylin and eosin stain, ×200."),
}
_SEXES = ("man", "woman", "patient", "male", "female")
_SEEN = ("seen", "noted", "present", "visible", "evident", "identified", "demonstrated")
_PRE_NEG = (("no ",), ("there is no ",), ("no evidence of ",), ("there is no evidence of ",),
            ("negative for ",), ("the study is negative for ",), ("absence of ", " is confirmed"),
            ("the image is free of ",), ("the patient was ruled out for ",), ("without evidence of ",))
_POST_NEG = (" is absent", " was not seen", " is not identified", " was excluded")


@dataclass(frozen=True)
class PanelText:
    """What a (sub)caption must say: the panel's modality and present findings (with their centroids
    in a panel of ``shape`` (H, W) pixels, used for location phrases)."""

    modality: str
    findings: tuple[str, ...]
    centers: dict[str, tuple[float, float]] = field(default_factory=dict)
    shape: tuple[int, int] = (128, 128)


@dataclass
class Caption:
    """Caption text, every concept mention (``concept_id, start_char, end_char, negated``) and, for a
    compound caption, the panel sub-captions (``label, start_char, end_char``)."""

    text: str
    mentions: list[dict]
    subcaptions: list[dict]


@dataclass(frozen=True)
class _M:
    """A concept mention to write: the surface form as in the lexicon, negated or not, plural or not."""

    concept_id: str
    form: str
    negated: bool
    plural: bool = False


Item = str | _M


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Writer:
    """Appends caption text and records the character span of every concept mention."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.parts: list[str] = []
        self.pos = 0
        self.mentions: list[dict] = []
        self.double_space = rng.random() < 0.12

    def raw(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def sep(self) -> None:
        self.raw("  " if self.double_space and self.rng.random() < 0.6 else " ")

    def sentence(self, items: list[Item], capitalise: bool = True) -> None:
        for i, it in enumerate(items):
            start = i == 0 and capitalise
            if isinstance(it, str):
                self.raw(_capitalise(it) if start and self.rng.random() < 0.96 else it)
                continue
            u = self.rng.random()
            text = (_capitalise(it.form) if u < 0.94 else it.form) if start else (
                it.form.lower() if u < 0.04 else it.form)
            self.mentions.append({"concept_id": it.concept_id, "start_char": self.pos,
                                  "end_char": self.pos + len(text), "negated": it.negated})
            self.raw(text + ("s" if it.plural else ""))

    def text(self) -> str:
        return "".join(self.parts)


class CaptionWriter:
    """Writes captions for one modality lexicon; every random choice comes from the caller's ``rng``."""

    def __init__(self, lexicon: ConceptLexicon):
        self.lex = lexicon
        self.modality_forms = {m.id: tuple(dict.fromkeys((m.name, *m.synonyms))) for m in lexicon.modalities}
        self.by_modality = {m.id: tuple(c.id for c in lexicon.for_modality(m.id)) for m in lexicon.modalities}
        self.concepts: dict[str, Concept] = {c.id: c for c in lexicon.concepts}

    # ------------------------------------------------------------------ pieces
    def _mention(self, rng: np.random.Generator, cid: str, negated: bool, allow_plural: bool = True) -> _M:
        forms = self.concepts[cid].surface_forms
        plural = allow_plural and rng.random() < 0.18
        if plural:
            plural_forms = [f for f in forms if f.lower().endswith(_PLURAL_HEADS)]
            if plural_forms:
                forms = tuple(plural_forms)
            else:
                plural = False
        # the preferred name about 40 % of the time, else a synonym
        use_name = rng.random() < 0.4 or len(forms) == 1
        form = forms[0] if use_name else forms[1 + rng.integers(len(forms) - 1)]
        return _M(cid, form, negated, plural)

    def _modality(self, rng: np.random.Generator, modality: str) -> str:
        forms = self.modality_forms[modality]
        return forms[rng.integers(len(forms))]

    def _modality_plural(self, rng: np.random.Generator, modality: str) -> str:
        form = self._modality(rng, modality)
        if form.endswith(" of the brain"):
            return form.replace("image of", "images of")
        if form == "dermoscopy":
            return "dermoscopy images"
        return form + "s"

    @staticmethod
    def _where(p: PanelText, cid: str, rng: np.random.Generator) -> str | None:
        """A location phrase (with a leading space) from the finding's centroid, or None."""
        if cid not in p.centers or rng.random() > 0.35:
            return None
        y, x = p.centers[cid]
        h, w = p.shape
        side = "right" if x < w / 2 else "left"          # radiological view: patient's right on image left
        zone = "upper" if y < 0.45 * h else "lower"
        lobe = "frontal" if y < 0.4 * h else ("parietal" if y < 0.62 * h else "occipital")
        half = "left" if x < w / 2 else "right"
        options = {
            "MC001": (f"at the {side} base", f"in the {side} hemithorax"),
            "MC002": (f"on the {side}", f"at the {side} apex"),
            "MC004": (f"in the {side} {zone} zone", f"in the {side} lung"),
            "MC006": ("in the right hepatic lobe", "in the liver"),
            "MC007": (f"in the {side} kidney",),
            "MC008": ("in the perihepatic space", "around the liver"),
            "MC009": ("in the retroperitoneum", "adjacent to the aorta"),
            "MC010": (f"in the {side} {lobe} lobe",),
            "MC011": (f"in the {side} {lobe} lobe",),
            "MC012": (f"in the {side} {lobe} lobe", f"in the {side} hemisphere"),
            "MC013": ("in the periventricular white matter", "adjacent to the lateral ventricles"),
            "MC014": ("near the macula", "in the posterior pole"),
            "MC015": ("at the macula", "in a circinate pattern"),
            "MC016": ("in the macular region", "at the posterior pole"),
            "MC019": ("within the lesion", "in the centre of the lesion"),
            "MC020": ("within the lesion", "in part of the lesion"),
            "MC021": ("at the periphery of the lesion", "within the lesion"),
            "MC022": (f"in the {zone} {half} field",),
            "MC024": ("in the stroma", f"in the {zone} {half} field"),
        }
        if cid == "MC005":
            opts = (f"in the {side} {zone} zone", f"in the {side} lung") if p.modality == "chest_xray" \
                else (f"in the {side} lower lobe",)
        elif cid == "MC026":
            opts = (f"in the {side} basal ganglia",) if p.modality == "brain_mri" else ()
        else:
            opts = options.get(cid, ())
        if not opts:
            return None
        return " " + opts[rng.integers(len(opts))]

    def _positive_phrase(self, rng: np.random.Generator, p: PanelText, cid: str) -> list[Item]:
        items: list[Item] = [self._mention(rng, cid, False)]
        where = self._where(p, cid, rng)
        return items + [where] if where else items

    @staticmethod
    def _join(rng: np.random.Generator, phrases: list[list[Item]], conj: str) -> list[Item]:
        """"X", "X and Y", "X, Y and Z" (or with a serial comma)."""
        out: list[Item] = list(phrases[0])
        for k, ph in enumerate(phrases[1:], start=1):
            if k == len(phrases) - 1:
                out.append(f", {conj} " if len(phrases) > 2 and rng.random() < 0.4 else f" {conj} ")
            else:
                out.append(", ")
            out.extend(ph)
        return out

    def _positive_list(self, rng: np.random.Generator, p: PanelText, cids: list[str]
                       ) -> tuple[list[Item], str]:
        phrases = [self._positive_phrase(rng, p, c) for c in cids]
        many = len(cids) > 1 or any(isinstance(i, _M) and i.plural for ph in phrases for i in ph)
        return self._join(rng, phrases, "and"), ("are" if many else "is")

    def _negated_list(self, rng: np.random.Generator, cids: list[str]) -> list[Item]:
        conj = "or" if rng.random() < 0.7 else "and"
        return self._join(rng, [[self._mention(rng, c, True)] for c in cids], conj)

    @staticmethod
    def _age_sex(rng: np.random.Generator) -> str:
        """'a 45-year-old woman', 'an 81-year-old man'."""
        age = int(rng.integers(18, 90))
        article = "an" if age in (11, 18) or 80 <= age <= 89 or age == 8 else "a"
        return f"{article} {age}-year-old {_SEXES[rng.integers(len(_SEXES))]}"

    # --------------------------------------------------------------- sentences
    def _lead(self, rng: np.random.Generator, p: PanelText, present: list[str]) -> list[list[Item]]:
        """Sentences that affirm every present finding and name the modality."""
        lst, be = self._positive_list(rng, p, present)
        mod = self._modality(rng, p.modality)
        k = int(rng.integers(10))
        if k == 0:
            return [[mod, " showing "] + lst + ["."]]
        if k == 1:
            return [[mod, " demonstrates "] + lst + ["."]]
        if k == 2:
            return [lst + [" on ", mod, "."]]
        if k == 3:
            return [[mod, f" of {self._age_sex(rng)} with "] + lst + ["."]]
        if k == 4:
            return [[mod, " reveals "] + lst + ["."]]
        if k == 5:
            out = [[mod, "."]]
            for c in present:
                ph = self._positive_phrase(rng, p, c)
                be1 = "are" if isinstance(ph[0], _M) and ph[0].plural else "is"
                seen = _SEEN[rng.integers(len(_SEEN))]
                if len(ph) > 1:
                    out.append([ph[0], f" {be1} {seen}", ph[1], "."])
                else:
                    out.append([ph[0], f" {be1} {seen}."])
            return out
        if k == 6:
            return [[f"there {be} "] + lst + [" on this ", mod, "."]]
        if k == 7:
            return [[mod, " in a patient with "] + lst + ["."]]
        if k == 8:
            return [["findings consistent with "] + lst + [" on ", mod, "."]]
        arrows = " (arrows)" if len(present) > 1 else " (arrow)"
        return [lst + [arrows, " on ", mod, "."]]

    def _follow_up(self, rng: np.random.Generator, p: PanelText, cid: str) -> list[Item]:
        """A second positive mention of a present finding."""
        m = self._mention(rng, cid, False, allow_plural=False)
        k = int(rng.integers(3))
        if k == 0:
            return ["note the ", m, "."]
        if k == 1:
            return ["arrowheads indicate the ", m, "."]
        return ["the ", m, " is best appreciated on this view."]

    def _negation(self, rng: np.random.Generator, absent: list[str]) -> list[Item]:
        """A sentence negating every concept in ``absent`` (and mentioning nothing else)."""
        if len(absent) == 1 and rng.random() < 0.3:
            m = self._mention(rng, absent[0], True, allow_plural=False)
            return [m, _POST_NEG[rng.integers(len(_POST_NEG))] + "."]
        cue = _PRE_NEG[rng.integers(len(_PRE_NEG))]
        tail = cue[1] if len(cue) > 1 else ""
        return [cue[0]] + self._negated_list(rng, absent) + [tail + "."]

    def _mixed(self, rng: np.random.Generator, p: PanelText, cid: str, absent: list[str]) -> list[Item]:
        """One sentence affirming ``cid`` and negating ``absent`` (affirmation outside the cue's scope)."""
        ph = self._positive_phrase(rng, p, cid)
        be = "are" if isinstance(ph[0], _M) and ph[0].plural else "is"
        neg = self._negated_list(rng, absent)
        k = int(rng.integers(5))
        if k == 0:
            return ["no "] + neg + [", but "] + ph[:1] + [f" {be} present"] + ph[1:] + ["."]
        if k == 1:
            return ph[:1] + [f" {be} seen"] + ph[1:] + [", without "] + neg + ["."]
        if k == 2:
            return ph + [" with no "] + neg + ["."]
        if k == 3:
            return ["no "] + neg + ["; "] + ph + [f" {be} noted."]
        return ["no "] + neg + [" is seen, however "] + ph + [f" {be} evident."]

    def _normal(self, rng: np.random.Generator, p: PanelText, absent: list[str]) -> list[list[Item]]:
        mod = self._modality(rng, p.modality)
        k = int(rng.integers(7))
        if k == 0 or not absent:
            negate = bool(absent) and rng.random() < 0.6
            return [["normal ", mod, "."]] + ([self._negation(rng, absent)] if negate else [])
        if k == 1:
            return [[mod, " without "] + self._negated_list(rng, absent) + ["."]]
        if k == 2:
            return [["unremarkable ", mod, "; no "] + self._negated_list(rng, absent) + ["."]]
        if k == 3:
            return [[mod, " with no "] + self._negated_list(rng, absent) + ["."]]
        if k == 4:
            return [[mod, " of a healthy volunteer."]]
        if k == 5:
            return [[mod, f" of {self._age_sex(rng)}."], self._negation(rng, absent)]
        return [["no abnormality on this ", mod, "."]]

    def _distractor(self, rng: np.random.Generator, modality: str) -> str:
        pool = _DISTRACTORS_COMMON + _DISTRACTORS[modality]
        s = pool[rng.integers(len(pool))]
        return s.format(n=int(rng.integers(1, 30)), age_sex=self._age_sex(rng))

    def _absent(self, rng: np.random.Generator, p: PanelText, k_max: int) -> list[str]:
        pool = [c for c in self.by_modality[p.modality] if c not in p.findings]
        k = min(len(pool), 1 if rng.random() < 0.6 else 2, k_max)
        if k == 0:
            return []
        idx = rng.choice(len(pool), size=k, replace=False)
        return [pool[i] for i in sorted(idx)]

    def _panel_sentences(self, rng: np.random.Generator, p: PanelText, short: bool) -> list[list[Item]]:
        present = list(p.findings)
        if present:
            order = [present[i] for i in rng.permutation(len(present))]
            absent = self._absent(rng, p, 2)
            if absent and len(order) == 1 and rng.random() < 0.25:
                mod = self._modality(rng, p.modality)
                plain = short or rng.random() < 0.5
                head = [[mod, "."]] if plain else [[mod, f" of {self._age_sex(rng)}."]]
                return head + [self._mixed(rng, p, order[0], absent)]
            out = self._lead(rng, p, order)
            if not short and rng.random() < 0.2:
                out.append(self._follow_up(rng, p, order[rng.integers(len(order))]))
            if absent and rng.random() < (0.3 if short else 0.5):
                if rng.random() < 0.3:
                    out.append(self._mixed(rng, p, order[rng.integers(len(order))], absent))
                else:
                    out.append(self._negation(rng, absent))
            return out
        absent = self._absent(rng, p, 2 if rng.random() < 0.5 else 3)
        return self._normal(rng, p, absent)

    # ------------------------------------------------------------------ public
    def single(self, rng: np.random.Generator, panel: PanelText) -> Caption:
        """Caption of a one-panel figure."""
        w = _Writer(rng)
        sentences = self._panel_sentences(rng, panel, short=False)
        n_distract = int(rng.choice(3, p=(0.45, 0.4, 0.15)))
        extra = [[self._distractor(rng, panel.modality)] for _ in range(n_distract)]
        if extra and rng.random() < 0.25:         # a note before the findings shifts every span
            sentences = extra[:1] + sentences + extra[1:]
        else:
            sentences += extra
        for i, s in enumerate(sentences):
            if i:
                w.sep()
            w.sentence(s)
        self._trail(rng, w)
        return Caption(w.text(), w.mentions, [])

    def compound(self, rng: np.random.Generator, panels: list[PanelText]) -> Caption:
        """Caption of a multi-panel figure: optional lead, then "(a) ... (b) ..." sub-captions."""
        w = _Writer(rng)
        upper = rng.random() < 0.3
        mod = panels[0].modality
        if rng.random() < 0.6:
            k = int(rng.integers(4))
            mods = self._modality_plural(rng, mod)
            lead = ([mods, " of two patients."], ["two ", mods, "."], ["representative ", mods, "."],
                    ["comparison of two ", mods, "."])[k]
            w.sentence(lead)
            w.sep()
        subs = []
        for j, p in enumerate(panels):
            if j:
                w.sep()
            label = f"({chr((65 if upper else 97) + j)})"
            start = w.pos
            w.raw(label + " ")
            cap = rng.random() < 0.85
            for i, s in enumerate(self._panel_sentences(rng, p, short=True)):
                if i:
                    w.sep()
                w.sentence(s, capitalise=cap or i > 0)
            subs.append({"label": label, "start_char": start})
        if rng.random() < 0.3:
            w.sep()
            w.sentence([self._distractor(rng, mod)])
        self._trail(rng, w)
        for j, s in enumerate(subs):
            s["end_char"] = subs[j + 1]["start_char"] if j + 1 < len(subs) else w.pos
        return Caption(w.text(), w.mentions, subs)

    @staticmethod
    def _trail(rng: np.random.Generator, w: _Writer) -> None:
        if rng.random() < 0.07:
            w.raw(" " if rng.random() < 0.6 else "  ")
