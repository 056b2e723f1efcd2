import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A tiny copy of this repository after one ``dvc repro``, committed to git (tests/tiny_project.py).

    Shared by the session: tests that change it work on a ``git clone`` or a copy.
    """
    from tiny_project import build_tiny_project

    work = tmp_path_factory.mktemp("tiny") / "repo"
    build_tiny_project(work)
    return work
