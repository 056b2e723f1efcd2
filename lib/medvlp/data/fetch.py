"""``make data`` (``medvlp get-data``): get data/ as data.dvc records it, never deleting or replacing a corpus.

1. data/ present and matching data.dvc: nothing to do. Present but different: stop and say what to do; data/ is
   never deleted or overwritten (it may be a team's corpus that is not yet ``dvc add``-ed).
2. data/ absent: ``dvc pull data.dvc`` from the default DVC remote (or ``dvc checkout`` from the local cache when
   no remote is configured). A failed pull prints the remote's name, URL and DVC's error.
3. Still absent: regenerate the synthetic corpus, but only when data.dvc records the synthetic corpus's hash
   (``SYNTHETIC_CORPUS_MD5``, kept honest by a test that regenerates it); a team's corpus only comes from its
   remote, so with any other hash this stops, naming the remote that failed. The corpus is written to a
   temporary folder beside data/, checked against data.dvc and only then renamed to data/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from medvlp.data.dirhash import dvc_dir_hash, dvc_file_hash

DVC = (sys.executable, "-m", "dvc")


class DataError(RuntimeError):
    """data/ cannot be made to match data.dvc without deleting or replacing something; the message says why."""


def default_remote(root: str | Path = ".") -> tuple[str, str] | None:
    """``(name, url)`` of the DVC default remote of the repository at ``root`` (all config levels), else None."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return None
        return name, str(repo.config["remote"].get(name, {}).get("url", "?"))


def _dvc_error(out: subprocess.CompletedProcess) -> str:
    text = (out.stderr or "") + (out.stdout or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "WARNING"))]
    return "\n".join(f"    {line}" for line in (errors or lines[-5:])) or "    (dvc printed nothing)"


def get_data(root: str | Path = ".", data: str = "data", dvc_file: str = "data.dvc", *,
             synthetic_md5: str | None = None, synth_kwargs: dict | None = None, log=print) -> str:
    """Make ``root/data`` match ``root/dvc_file`` (see the module docstring); returns how: ``'present'``,
    ``'pulled'``, ``'checked out'`` or ``'regenerated'``. Raises :class:`DataError` instead of deleting data/,
    or of regenerating when ``dvc_file`` records another corpus than the synthetic one."""
    from medvlp.data.synthetic import SYNTHETIC_CORPUS_MD5, generate_corpus

    root = Path(root)
    target, expected = root / data, dvc_file_hash(root / dvc_file)
    synthetic_md5 = synthetic_md5 or SYNTHETIC_CORPUS_MD5
    if target.exists():
        actual = dvc_dir_hash(target) if target.is_dir() else "not a directory"
        if actual == expected:
            log(f"{data}/ matches {dvc_file}")
            return "present"
        raise DataError(
            f"{data}/ ({actual}) does not match {dvc_file} ({expected}); make data never deletes or overwrites "
            f"{data}/. If {data}/ is the corpus you mean to use, record it: `.venv/bin/dvc add {data}` and commit "
            f"{dvc_file}. To get the corpus {dvc_file} records, move yours away (`mv {data} {data}.mine`) and rerun "
            "`make data`.")

    remote = default_remote(root)
    failure = None
    if remote is None:
        log("no DVC remote is configured (`.venv/bin/dvc remote list` is empty): trying the local DVC cache")
        out = subprocess.run([*DVC, "checkout", "-q", dvc_file], cwd=root, capture_output=True, text=True)
        how = "checked out"
        failure = "no DVC remote is configured, and the local DVC cache does not hold it"
    else:
        name, url = remote
        out = subprocess.run([*DVC, "pull", dvc_file], cwd=root, capture_output=True, text=True)
        how = "pulled"
        if out.returncode != 0:
            failure = f"`dvc pull {dvc_file}` from the DVC remote '{name}' ({url}) failed"
            log(f"{failure}:\n{_dvc_error(out)}", file=sys.stderr)
    if out.returncode == 0 and target.is_dir() and dvc_dir_hash(target) == expected:
        log(f"{data}/ {how} ({'from the DVC remote ' + repr(remote[0]) if remote else 'from the local DVC cache'})")
        return how
    if target.exists():  # absent before: only what this failed pull / checkout wrote, never someone's data
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    if expected != synthetic_md5:
        raise DataError(
            f"{failure}; {dvc_file} records {expected}, not the synthetic corpus ({synthetic_md5}): that corpus only "
            "comes from the team's DVC remote, so make data will not replace it with the synthetic one. Check the "
            "remote (`.venv/bin/dvc remote list`, `.venv/bin/dvc remote modify --local <name> keyfile ...` for "
            "ssh, credentials for cloud storage, the network) and rerun `make data`.")
    log(f"{dvc_file} records the synthetic corpus: regenerating it (about a minute on 2 cores)")
    tmp = root / f".{data}.synth-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous interrupted regeneration of ours
    generate_corpus(tmp, progress=False, **(synth_kwargs or {}))
    actual = dvc_dir_hash(tmp)
    if actual != expected:
        shutil.rmtree(tmp)
        raise DataError(f"the regenerated corpus hashes to {actual}, not {expected} recorded in {dvc_file}: "
                        "different medvlp, numpy or Pillow versions than constraints.txt pins? (`make venv`)")
    tmp.rename(target)
    out = subprocess.run([*DVC, "commit", "-q", "-f", dvc_file], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:  # data/ is right; only the DVC cache lacks it (a later `dvc push` would)
        log(f"`dvc commit {dvc_file}` failed (data/ itself is correct):\n{_dvc_error(out)}", file=sys.stderr)
    log(f"{data}/ regenerated and matches {dvc_file}")
    return "regenerated"
