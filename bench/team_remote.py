"""A teammate's time from ``git clone`` to results, with a DVC remote: clone, ``dvc pull``, ``dvc repro`` (which must
rerun nothing) and ``dvc status``, each timed, on a fresh clone of SRC in a temporary folder.

    python bench/team_remote.py [SRC] [--remote URL] [--workdir DIR] [--keep]

SRC (default: this repository) must have pushed its data and outputs (``dvc push --run-cache``) to its default
remote (``--remote URL`` overrides the URL, keeping that remote's other settings). The clone's ``.venv`` links
to SRC's, so installing the environment (``make venv``) is not part of the time; SRC's .dvc/config.local (e.g.
an ssh ``keyfile``) is copied into the clone, and a relative local-folder remote is resolved against SRC. Prints the
seconds of each step and ``clone to results: <s> s``. tests/test_team.py runs it on the tiny project.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DVC = [sys.executable, "-m", "dvc"]


def run(cmd: list, cwd: Path) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout + out.stderr


def source_remote(src: Path) -> tuple[str, str] | None:
    """SRC's default remote ``(name, url)``, a relative folder resolved against SRC/.dvc (as DVC resolves it)."""
    name = subprocess.run([*DVC, "remote", "default"], cwd=src, capture_output=True, text=True).stdout.strip()
    if not name:
        return None
    url = run([*DVC, "config", f"remote.{name}.url"], src).strip()
    if "://" not in url and not Path(url).is_absolute():
        url = str((src / ".dvc" / url).resolve())
    return name, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--remote", help="DVC remote URL to pull from (default: SRC's default remote)")
    ap.add_argument("--workdir", type=Path, help="where to clone (default: a temporary folder, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the clone")
    args = ap.parse_args()
    src = args.src.resolve()
    remote = source_remote(src)
    if remote is None:
        sys.exit(f"{src} has no default DVC remote: `dvc remote add -d NAME URL` there first")
    name, url = remote[0], args.remote or remote[1]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medvlp-team-"))
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "clone"
    if clone.exists():
        sys.exit(f"{clone} exists; pick another --workdir")
    times = {}
    try:
        start = t = time.perf_counter()
        run(["git", "clone", "-q", src, clone], work)
        if (src / ".venv").exists():
            (clone / ".venv").symlink_to((src / ".venv").resolve(), target_is_directory=True)
        if (src / ".dvc" / "config.local").is_file():  # SRC's own settings: keyfile, credentials, ...
            shutil.copy(src / ".dvc" / "config.local", clone / ".dvc" / "config.local")
        run([*DVC, "remote", "default", "--local", name], clone)
        run([*DVC, "remote", "modify", "--local", name, "url", url], clone)
        times["git clone"], t = time.perf_counter() - t, time.perf_counter()
        pulled = run([*DVC, "pull"], clone)
        times["dvc pull"], t = time.perf_counter() - t, time.perf_counter()
        repro = run([*DVC, "repro"], clone)
        times["dvc repro"], t = time.perf_counter() - t, time.perf_counter()
        status = run([*DVC, "status"], clone)
        times["dvc status"] = time.perf_counter() - t
        total = time.perf_counter() - start
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    rerun = re.findall(r"Running stage '([^']+)'", repro)
    print(f"source {src}, remote {name!r} ({url})")
    print(f"dvc pull: {pulled.strip().splitlines()[-1] if pulled.strip() else '(nothing printed)'}")
    for step, s in times.items():
        print(f"  {step:<11} {s:8.1f} s")
    print(f"clone to results: {total:.1f} s; dvc repro {'reran ' + ', '.join(rerun) if rerun else 'reran nothing'}; "
          f"dvc status: {status.strip().splitlines()[-1]}")
    return 1 if rerun else 0


if __name__ == "__main__":
    sys.exit(main())
