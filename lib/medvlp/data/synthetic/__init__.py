"""The deterministic synthetic source corpus (README: "The default corpus").

``generate_corpus(out_dir)`` writes ``out_dir/figures`` (2D figure-caption pairs with finding masks)
and ``out_dir/ct`` (3D CT studies in Hounsfield units with anatomy label maps and reports), plus
``out_dir/corpus.json`` describing how it was made. The same seed gives byte-identical files on
every machine, so the directory hash equals the one recorded in ``data.dvc``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

GENERATOR_VERSION = 1
DEFAULT_SEED = 20250126
DEFAULT_FIGURES = 4000
DEFAULT_STUDIES = 600
#: ``dvc_dir_hash`` of ``generate_corpus`` with the defaults above (the md5 data.dvc records for the synthetic
#: corpus). ``make data`` (medvlp.data.fetch) regenerates data/ only when data.dvc records this hash, so a team's
#: corpus is never replaced by the synthetic one; tests/test_repository.py regenerates the corpus and checks it.
SYNTHETIC_CORPUS_MD5 = "2f86f0eae889ad9b359f7084cb114e88.dir"


def generate_corpus(
    out_dir: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    n_figures: int = DEFAULT_FIGURES,
    n_studies: int = DEFAULT_STUDIES,
    progress: bool = True,
) -> dict:
    """Write the synthetic corpus into ``out_dir`` (which must be empty or absent).

    Returns a summary: counts per collection, bad records planted on purpose, and seconds taken.
    """
    from .ct import generate_ct
    from .figures import generate_figures

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; remove it first (generation never overwrites a corpus)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    figures = generate_figures(out / "figures", seed=seed, n_figures=n_figures, progress=progress)
    t1 = time.perf_counter()
    ct = generate_ct(out / "ct", seed=seed, n_studies=n_studies, progress=progress)
    t2 = time.perf_counter()
    description = {
        "generator": "medvlp.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_figures": n_figures,
        "n_studies": n_studies,
    }
    (out / "corpus.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n", "utf-8")
    return {**description, "figures": figures, "ct": ct,
            "seconds": {"figures": round(t1 - t0, 1), "ct": round(t2 - t1, 1)}}
