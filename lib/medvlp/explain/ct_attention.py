"""fVLM anatomy attention on test CT studies: the inputs of :func:`~medvlp.explain.plots.plot_anatomy_attention`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvlp.eval.data import load_ct, read_truth
from medvlp.eval.stage import checkpoint_path
from medvlp.explain.heatmaps import anatomy_attention_maps
from medvlp.lexicon import load_anatomy_lexicon
from medvlp.models import FVLM, load_model
from medvlp.models.volume_tower import volume_size
from medvlp.params import run_name


def attention_examples(model_name: str, n: int, *, run_seed: int, curated_dir: str, data_dir: str,
                       pretrain_dir: str, checkpoint: str, split: str, anatomy_lexicon: str | None = None,
                       n_slices: int = 4) -> list[dict]:
    """The first ``n`` test studies with an abnormal anatomy (in split order), each as a dict:
    ``volume`` [X, Y, Z], ``label_map`` [X, Y, Z], ``attention`` [A, X, Y, Z], ``anatomy_names``,
    ``anatomy_labels``, ``show`` (the abnormal anatomies first, then others, at most 4), ``slices``
    (the ``n_slices`` axial slices where the first abnormal anatomy is largest) and ``title``."""
    model = load_model(checkpoint_path(pretrain_dir, run_name(model_name, run_seed), checkpoint))
    if not isinstance(model, FVLM):
        raise ValueError(f"attention_examples needs an fVLM model; {model_name!r} is a {type(model).__name__}")
    lexicon = load_anatomy_lexicon(anatomy_lexicon)
    truth_path = Path(data_dir) / "ct" / "ct_truth.jsonl"
    truth = read_truth(truth_path)
    studies = load_ct(curated_dir, split, lexicon, volume_size(model.config), truth_path)
    ids = [a.id for a in lexicon.anatomies]
    out = []
    for i, sid in enumerate(studies.ids):
        abnormal = [a for a, found in (truth.get(sid, {}).get("labels") or {}).items() if found and a in ids]
        if not abnormal:
            continue
        attention = anatomy_attention_maps(model, studies.volumes[i:i + 1], studies.label_maps[i:i + 1])[0]
        first = ids.index(abnormal[0])
        label = lexicon.anatomies[first].label
        per_slice = (studies.label_maps[i] == label).sum(dim=(0, 1)).numpy()
        slices = sorted(np.argsort(-per_slice)[:n_slices].tolist())
        show = [ids.index(a) for a in abnormal][:4]
        show += [k for k in range(len(ids)) if k not in show and (studies.label_maps[i] == lexicon.anatomies[k].label)
                 .any()][: 4 - len(show)]
        findings = "; ".join(f"{a}: {', '.join(truth[sid]['labels'][a])}" for a in abnormal)
        out.append({"volume": studies.volumes[i, 0].numpy(), "label_map": studies.label_maps[i].numpy(),
                    "attention": attention.cpu().numpy(), "anatomy_names": [a.name for a in lexicon.anatomies],
                    "anatomy_labels": model.anatomy_labels, "show": show, "slices": slices,
                    "title": f"{sid} ({findings})"})
        if len(out) == n:
            break
    return out
