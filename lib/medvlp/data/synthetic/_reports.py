"""Radiology reports (findings + impression) for the synthetic CT studies.

Written to the shared text conventions (see the corpus README): every findings sentence is about
one anatomy (or two, "The liver and spleen are unremarkable.") and names it with a surface form of
``resources/anatomy.json`` (the anatomy, or an abnormality that implies it); the impression holds
one positive statement per abnormal anatomy, or a sentence naming no anatomy. The generator also
returns each sentence with its true anatomies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from medvlp.lexicon import AnatomyLexicon

CHEST = ("lung", "heart", "aorta", "esophagus")
ABDOMEN = ("liver", "gallbladder", "spleen", "pancreas", "kidney", "stomach")

#: Noun used for an anatomy in "The X and Y are unremarkable."
PAIR_NOUN = {"lung": "lungs", "heart": "heart", "aorta": "aorta", "esophagus": "esophagus", "liver": "liver",
             "gallbladder": "gallbladder", "spleen": "spleen", "pancreas": "pancreas", "kidney": "kidneys",
             "stomach": "stomach"}

#: Sentences about a normal anatomy; those keyed by an abnormality negate that abnormality.
NORMAL = {
    "lung": ["The lungs are clear.", "The lung parenchyma is clear.", "The lungs are well aerated."],
    "heart": ["The heart is normal in size.", "Heart size is normal.",
              "The cardiomediastinal silhouette is within normal limits."],
    "aorta": ["The aorta is normal in caliber.", "The thoracic aorta is of normal caliber.",
              "The abdominal aorta is normal in caliber."],
    "esophagus": ["The esophagus is unremarkable.", "The oesophagus is unremarkable.",
                  "The esophagus is not dilated."],
    "liver": ["The liver is unremarkable.", "The liver is normal in size and attenuation.",
              "The hepatic parenchyma is homogeneous."],
    "gallbladder": ["The gallbladder is unremarkable.", "The gall bladder is unremarkable.",
                    "The gallbladder is normally distended."],
    "spleen": ["The spleen is unremarkable.", "The spleen is normal in size."],
    "pancreas": ["The pancreas is unremarkable.", "The pancreas is normal in size."],
    "kidney": ["The kidneys are unremarkable.", "The kidneys enhance symmetrically."],
    "stomach": ["The stomach is unremarkable.", "The stomach is decompressed.",
                "The small bowel is unremarkable."],
}
NEGATED = {
    "lung_nodule": ["No suspicious pulmonary nodule.", "No lung nodule."],
    "pleural_effusion": ["No pleural effusion.", "There is no pleural effusion."],
    "consolidation": ["No focal consolidation."],
    "emphysema": ["No emphysema."],
    "cardiomegaly": ["No cardiomegaly."],
    "pericardial_effusion": ["No pericardial effusion."],
    "aortic_calcification": ["No aortic calcification."],
    "aortic_aneurysm": ["No aortic aneurysm."],
    "hiatal_hernia": ["No hiatal hernia."],
    "liver_cyst": ["No hepatic cyst."],
    "fatty_liver": ["No hepatic steatosis."],
    "gallstone": ["No cholelithiasis.", "No gallstone is seen."],
    "splenomegaly": ["No splenomegaly."],
    "pancreatic_atrophy": ["No pancreatic atrophy."],
    "renal_cyst": ["No renal cyst."],
    "kidney_stone": ["No renal calculus.", "No nephrolithiasis."],
    "gastric_wall_thickening": ["No gastric wall thickening."],
}
#: Sentences that name no anatomy: (text, place) with place "start" or "end" of the findings.
NEUTRAL_FINDINGS = [("Limited evaluation due to motion.", "start"),
                    ("Evaluation is limited by streak artifact.", "start"),
                    ("Degenerative changes of the spine are noted.", "end"),
                    ("No acute osseous abnormality.", "end"), ("No free air.", "end"),
                    ("No lymphadenopathy.", "end")]
NORMAL_IMPRESSION = ["No acute abnormality.", "No acute findings in the chest or abdomen.",
                     "No acute intrathoracic or intra-abdominal process.", "Unremarkable examination."]
NO_OTHER = ["No other acute abnormality.", "No other acute findings."]

# Templates per abnormality: ``F`` full findings sentences, ``NP`` noun phrases (impression items and
# combined findings). Each is (template, abnormality surface forms it reads well with).
# Fields: {a} the form, {size}, {side}, {lobe}, {amount}, {degree}, {loc}, {segment}, {pole}, {gb}.
_LN = ["lung nodule", "pulmonary nodule", "nodular opacity"]
TEMPLATES: dict[str, dict[str, list[tuple[str, list[str]]]]] = {
    "lung_nodule": {
        "F": [("A {size} {a} is seen in the {side} {lobe} lobe.", _LN),
              ("There is a {size} {a} in the {side} lung.", _LN),
              ("{a} measuring approx. {size} in the {side} {lobe} lobe.", _LN),
              ("A solid {a} in the {side} {lobe} lobe measures {size}.", _LN)],
        "NP": [("{side} {lobe} lobe {a} measuring {size}", _LN),
               ("solid {a} in the {side} lung, {size}", _LN),
               ("{a} in the {side} {lobe} lobe", _LN)],
    },
    "pleural_effusion": {
        "F": [("There is a {amount} {side} {a}.", ["pleural effusion"]),
              ("{amount} {side} {a} with adjacent compressive atelectasis.", ["pleural effusion"]),
              ("A {amount} amount of {side} {a} is present.", ["pleural fluid"])],
        "NP": [("{amount} {side} {a}", ["pleural effusion", "pleural fluid"])],
    },
    "emphysema": {
        "F": [("{degree} centrilobular {a} is present in both lungs.", ["emphysema", "emphysematous change"]),
              ("There is {degree} {a} of the upper lungs.", ["emphysema", "emphysematous change"]),
              ("{degree} {a} is noted in the lung apices.", ["emphysema"])],
        "NP": [("{degree} centrilobular {a}", ["emphysema"]), ("{degree} pulmonary {a}", ["emphysema"]),
               ("{degree} {a} of the lungs", ["emphysema", "emphysematous change"])],
    },
    "consolidation": {
        "F": [("There is {a} in the {side} {lobe} lobe.", ["consolidation", "airspace consolidation"]),
              ("{a} is seen in the {side} lung, compatible with pneumonia.",
               ["consolidation", "airspace consolidation"]),
              ("Patchy {a} involves the {side} {lobe} lobe.", ["consolidation", "airspace consolidation"])],
        "NP": [("{side} {lobe} lobe {a}", ["consolidation", "airspace consolidation"]),
               ("{a} in the {side} lung", ["consolidation", "airspace consolidation"])],
    },
    "cardiomegaly": {
        "F": [("There is {degree} {a}.", ["cardiomegaly"]), ("{degree} {a} is noted.", ["cardiomegaly"]),
              ("An {a} is noted.", ["enlarged heart"])],
        "NP": [("{degree} {a}", ["cardiomegaly"]), ("{a}", ["enlarged heart", "cardiomegaly"])],
    },
    "pericardial_effusion": {
        "F": [("There is a {amount} {a}.", ["pericardial effusion"]),
              ("A {amount} amount of {a} is present.", ["pericardial fluid"]),
              ("{amount} {a} measuring up to {size} in thickness.", ["pericardial effusion"])],
        "NP": [("{amount} {a}", ["pericardial effusion", "pericardial fluid"])],
    },
    "aortic_calcification": {
        "F": [("There is {degree} {a} of the {loc} aorta.", ["atherosclerotic calcification"]),
              ("{degree} {a} is noted.", ["aortic calcification"]),
              ("{degree} {a} along the {loc} aorta.", ["atherosclerotic calcification"])],
        "NP": [("{degree} {a}", ["aortic calcification"]),
               ("{degree} {a} of the {loc} aorta", ["atherosclerotic calcification"])],
    },
    "aortic_aneurysm": {
        "F": [("There is a {loc} {a} measuring {size}.", ["aortic aneurysm"]),
              ("{a} of the {loc} aorta to {size}.", ["aneurysmal dilatation"]),
              ("The {loc} aorta shows {a}, measuring up to {size}.", ["aneurysmal dilatation"])],
        "NP": [("{loc} {a} measuring {size}", ["aortic aneurysm"]),
               ("{a} of the {loc} aorta, {size}", ["aneurysmal dilatation"])],
    },
    "hiatal_hernia": {
        "F": [("A {amount} {a} is present.", ["hiatal hernia", "hiatus hernia"]),
              ("There is a {a} measuring {size}.", ["hiatal hernia", "hiatus hernia"]),
              ("{amount} {a} with an air-fluid level.", ["hiatal hernia", "hiatus hernia"])],
        "NP": [("{amount} {a}", ["hiatal hernia", "hiatus hernia"])],
    },
    "liver_cyst": {
        "F": [("A {size} {a} is seen in segment {segment}.", ["liver cyst", "hepatic cyst"]),
              ("There is a {size} simple {a} in hepatic segment {segment}.", ["liver cyst"]),
              ("A {size} hypodense lesion in the liver is consistent with a {a}.",
               ["hepatic cyst", "liver cyst"])],
        "NP": [("{a} in segment {segment}, {size}", ["liver cyst", "hepatic cyst"]),
               ("simple {a} measuring {size}", ["liver cyst", "hepatic cyst"])],
    },
    "fatty_liver": {
        "F": [("There is diffuse {a}.", ["hepatic steatosis"]),
              ("The liver is diffusely hypoattenuating, consistent with {a}.",
               ["hepatic steatosis", "fatty liver"]),
              ("{degree} {a} is noted.", ["hepatic steatosis", "fatty liver"])],
        "NP": [("{degree} {a}", ["hepatic steatosis", "fatty liver"]),
               ("diffuse {a}", ["hepatic steatosis"])],
    },
    "gallstone": {
        "F": [("A {size} {a} is seen in the {gb}.", ["gallstone"]), ("There is {a}.", ["cholelithiasis"]),
              ("A calcified {a} measuring {size} lies in the dependent {gb}.", ["gallstone"])],
        "NP": [("{a}", ["cholelithiasis"]), ("{a} in the {gb}, {size}", ["gallstone"])],
    },
    "splenomegaly": {
        "F": [("There is {a}, with the spleen measuring {size}.", ["splenomegaly"]),
              ("An {a} measuring {size} is noted.", ["enlarged spleen"]),
              ("{a} is present.", ["splenomegaly"])],
        "NP": [("{a}", ["splenomegaly"]), ("{a} measuring {size}", ["splenomegaly", "enlarged spleen"])],
    },
    "pancreatic_atrophy": {
        "F": [("There is diffuse {a}.", ["pancreatic atrophy"]),
              ("An {a} with fatty replacement is noted.", ["atrophic pancreas"]),
              ("{a} is seen.", ["pancreatic atrophy"])],
        "NP": [("diffuse {a}", ["pancreatic atrophy"]), ("{a}", ["pancreatic atrophy", "atrophic pancreas"])],
    },
    "renal_cyst": {
        "F": [("A {size} {a} is seen in the {side} kidney.", ["renal cyst", "kidney cyst"]),
              ("There is a {size} simple {a} in the {pole} of the {side} kidney.",
               ["renal cyst", "kidney cyst"]),
              ("{side} {a} measuring {size}.", ["renal cyst"])],
        "NP": [("{side} {a} measuring {size}", ["renal cyst", "kidney cyst"]),
               ("simple {a} in the {side} kidney", ["renal cyst", "kidney cyst"])],
    },
    "kidney_stone": {
        "F": [("A {size} nonobstructing {a} is seen in the {side} kidney.",
               ["kidney stone", "renal calculus"]),
              ("There is {side} {a}, measuring {size}.", ["nephrolithiasis"]),
              ("A punctate {a} is present in the {side} collecting system.",
               ["kidney stone", "renal calculus"])],
        "NP": [("{side} {a}", ["nephrolithiasis"]),
               ("nonobstructing {side} {a}, {size}", ["kidney stone", "renal calculus"])],
    },
    "gastric_wall_thickening": {
        "F": [("There is {a} in the {loc}, measuring up to {size}.", ["gastric wall thickening"]),
              ("A {a} is seen in the gastric {loc}, up to {size}.", ["thickened gastric wall"]),
              ("{a} of the {loc}, measuring {size}.", ["gastric wall thickening"])],
        "NP": [("{a} of the {loc}", ["gastric wall thickening"]),
               ("{a} in the gastric {loc}, {size}", ["thickened gastric wall"])],
    },
}


@dataclass(frozen=True)
class Report:
    findings: str
    impression: str
    sentences: list[dict]


# "a 8 mm" -> "an 8 mm", "a 11 mm" -> "an 11 mm" (article before a number read aloud with a vowel)
_AN = re.compile(r"\b([Aa]) (?=(?:8|11|18)(?![\d.]\d)\b|8)")


def _articles(s: str) -> str:
    return _AN.sub(lambda m: m.group(1) + "n ", s)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _size(rng: np.random.Generator, mm: float) -> str:
    """'8 mm' below a centimetre, else '1.4 cm' or '14 mm'."""
    mm = int(round(mm))
    if mm < 10 or rng.random() < 0.25:
        return f"{mm} mm"
    return f"{mm / 10:.1f} cm"


def _fields(abn: str, facts: dict, rng: np.random.Generator) -> dict[str, str]:
    f = facts.get(abn, {})
    out = {
        "side": str(f.get("side", "right")), "lobe": str(f.get("lobe", "lower")),
        "amount": str(f.get("amount", "small")), "degree": str(f.get("degree", "mild")),
        "loc": str(f.get("location", "thoracic")), "segment": str(f.get("segment", "6")),
        "pole": str(f.get("pole", "interpolar region")),
        "gb": ["gallbladder", "gall bladder"][int(rng.integers(2))],
    }
    if "size_mm" in f:
        out["size"] = _size(rng, f["size_mm"])
    elif "diameter_cm" in f:
        out["size"] = f"{f['diameter_cm']:.1f} cm"
    elif "length_cm" in f:
        out["size"] = f"{f['length_cm']:.1f} cm"
    elif "thickness_cm" in f:
        out["size"] = _size(rng, 10.0 * f["thickness_cm"])
    elif "size_cm" in f:
        out["size"] = f"{f['size_cm']:.1f} cm"
    else:
        out["size"] = "1.0 cm"
    return out


def _fill(kind: str, abn: str, facts: dict, rng: np.random.Generator) -> str:
    options = TEMPLATES[abn][kind]
    template, forms = options[int(rng.integers(len(options)))]
    form = forms[int(rng.integers(len(forms)))]
    return _articles(template.format(a=form, **_fields(abn, facts, rng)))


def _region_order(rng: np.random.Generator) -> list[str]:
    """Chest anatomies first, then abdomen; neighbours inside a region sometimes swapped."""
    out: list[str] = []
    for region in (CHEST, ABDOMEN):
        r = list(region)
        for i in range(len(r) - 1):
            if rng.random() < 0.25:
                r[i], r[i + 1] = r[i + 1], r[i]
        out.extend(r)
    return out


def write_report(rng: np.random.Generator, labels: dict[str, list[str]], facts: dict[str, dict],
                 lex: AnatomyLexicon) -> Report:
    """Findings and impression for a study with ``labels`` ``{anatomy: [abnormality ids]}``.

    ``facts`` holds per-abnormality measurements from the phantom (side, size_mm, ...). Returns the
    two sections and every sentence as ``{section, text, anatomies}`` (``text`` is the exact
    substring of its section; the impression's list numbers "1. " are not part of it).
    """
    abn_of = {a.id: tuple(x.id for x in lex.abnormalities_of(a.id)) for a in lex.anatomies}
    order = _region_order(rng)
    abnormal = [a for a in order if labels.get(a)]
    findings: list[tuple[str, list[str]]] = []

    pending_normal: str | None = None
    for anatomy in order:
        abns = labels.get(anatomy, [])
        if abns:
            if pending_normal is not None:
                findings.append((_normal_sentence(rng, pending_normal, abn_of), [pending_normal]))
                pending_normal = None
            if len(abns) == 2 and rng.random() < 0.4:
                first, second = (_fill("NP", a, facts, rng) for a in abns)
                findings.append((_cap(first) + ", with " + second + ".", [anatomy]))
            else:
                for a in abns:
                    findings.append((_cap(_fill("F", a, facts, rng)), [anatomy]))
            absent = [x for x in NEGATED if x in abn_of[anatomy] and x not in abns]
            if absent and rng.random() < 0.2:
                neg = NEGATED[absent[int(rng.integers(len(absent)))]]
                findings.append((neg[int(rng.integers(len(neg)))], [anatomy]))
            continue
        if rng.random() >= 0.4:
            continue
        same_region = pending_normal is not None and ((pending_normal in CHEST) == (anatomy in CHEST))
        if same_region and rng.random() < 0.35:
            text = f"The {PAIR_NOUN[pending_normal]} and {PAIR_NOUN[anatomy]} are unremarkable."
            findings.append((text, sorted([pending_normal, anatomy])))
            pending_normal = None
            continue
        if pending_normal is not None:
            findings.append((_normal_sentence(rng, pending_normal, abn_of), [pending_normal]))
        pending_normal = anatomy
    if pending_normal is not None:
        findings.append((_normal_sentence(rng, pending_normal, abn_of), [pending_normal]))
    if not findings:
        anatomy = order[int(rng.integers(len(order)))]
        findings.append((_normal_sentence(rng, anatomy, abn_of), [anatomy]))
    if rng.random() < 0.25:
        text, place = NEUTRAL_FINDINGS[int(rng.integers(len(NEUTRAL_FINDINGS)))]
        if place == "start":
            findings.insert(0, (text, []))
        else:
            findings.append((text, []))

    impression: list[tuple[str, list[str]]] = []
    if not abnormal:
        impression.append((NORMAL_IMPRESSION[int(rng.integers(len(NORMAL_IMPRESSION)))], []))
    else:
        for anatomy in abnormal:
            abns = labels[anatomy]
            parts = [_fill("NP", a, facts, rng) for a in abns]
            joiner = " and " if rng.random() < 0.5 else ", with "
            impression.append((_cap(joiner.join(parts)) + ".", [anatomy]))
    numbered = len(impression) >= 2 and rng.random() < 0.5
    if abnormal and rng.random() < 0.3:
        impression.append((NO_OTHER[int(rng.integers(len(NO_OTHER)))], []))

    f_text = " ".join(t for t, _ in findings)
    if numbered:
        items = [f"{i + 1}. {t}" for i, (t, an) in enumerate(impression) if an]
        tail = [t for t, an in impression if not an]
        i_text = " ".join(items + tail)
    else:
        i_text = " ".join(t for t, _ in impression)
    sentences = [{"section": "findings", "text": t, "anatomies": sorted(an)} for t, an in findings]
    sentences += [{"section": "impression", "text": t, "anatomies": sorted(an)} for t, an in impression]
    return Report(f_text, i_text, sentences)


def _normal_sentence(rng: np.random.Generator, anatomy: str, abn_of: dict[str, tuple[str, ...]]) -> str:
    options = list(NORMAL[anatomy]) + [s for x in abn_of[anatomy] for s in NEGATED.get(x, ())]
    return options[int(rng.integers(len(options)))]

