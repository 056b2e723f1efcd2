"""Working as a team, on copies of the tiny project (tests/tiny_project.py): stage commands that find the project's
environment without PATH (bin/medvlp), a push / clone / pull round trip over a real ssh server, ``make data`` with
a broken remote, data versions with git tags, and DVC experiments (also queued).

Every ``dvc`` here runs as ``python -m dvc`` with a PATH that holds no ``medvlp`` and no ``dvc`` (``_env``), the way
the README writes ``.venv/bin/dvc ...`` without an activated environment."""

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medvlp.data.dirhash import dvc_dir_hash, dvc_file_hash

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "bin" / "medvlp"
APT_SSHD = "apt-get install -y openssh-server"


def _env(**extra: str) -> dict:
    """os.environ without the virtual environment: no PATH folder that holds a ``medvlp`` or ``dvc``."""
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and not (Path(p, "medvlp").exists() or Path(p, "dvc").exists())]
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH=os.pathsep.join(path), **extra)
    assert shutil.which("medvlp", path=env["PATH"]) is None
    return env


def _run(cmd: list, cwd: Path, *, ok: bool = True, env: dict | None = None, timeout: float = 900) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                         timeout=timeout)
    text = out.stdout + out.stderr
    if ok:
        assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{text}"
    return text


def dvc(cwd: Path, *args, **kw) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd, **kw)


def git(cwd: Path, *args, **kw) -> str:
    return _run(["git", *args], cwd, **kw)


def _venv_root() -> Path:
    """The environment running the tests; a clone's ``.venv`` links to it (bin/medvlp looks there first)."""
    root = Path(sys.prefix)
    if not (root / "bin" / "medvlp").exists():
        pytest.skip(f"{root}/bin/medvlp missing: install medvlp into this environment (`make venv`)")
    return root


def _copy(tiny_project: Path, dst: Path) -> Path:
    """A copy of the tiny project with ``.venv`` linked to this environment and a git identity for commits."""
    shutil.copytree(tiny_project, dst, symlinks=True)
    (dst / ".venv").symlink_to(_venv_root(), target_is_directory=True)
    git(dst, "config", "user.name", "medvlp tests")
    git(dst, "config", "user.email", "tests@medvlp.invalid")
    return dst


def _stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


# -- 1. bin/medvlp ------------------------------------------------------------------------------------------------


def _fake_medvlp(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "medvlp").write_text(f'#!/usr/bin/env bash\necho "{name} $*"\n')
    (folder / "medvlp").chmod(0o755)


def test_launcher_finds_the_nearest_venv_then_path_then_says_how_to_install(tmp_path):
    clone = tmp_path / "clone"
    workspace = clone / ".dvc" / "tmp" / "exps" / "tmp1234"  # where dvc exp run --temp / --queue runs a stage
    for where in (clone, workspace):
        (where / "bin").mkdir(parents=True)
        shutil.copy(LAUNCHER, where / "bin" / "medvlp")
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def launch(where: Path, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(["bin/medvlp", "notebook", "x"], cwd=where, env=env, capture_output=True, text=True,
                              timeout=30)

    out = launch(workspace, bare)  # no environment anywhere
    assert out.returncode == 127 and "medvlp is not installed: run `make venv`" in out.stderr, out
    on_path = tmp_path / "conda" / "bin"
    _fake_medvlp(on_path, "path")
    assert launch(workspace, {**bare, "PATH": f"{on_path}:/usr/bin:/bin"}).stdout == "path notebook x\n"
    # bin/ itself on PATH: the launcher skips itself instead of calling itself forever
    out = launch(clone, {**bare, "PATH": f"{clone / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 127 and "make venv" in out.stderr
    _fake_medvlp(clone / ".venv" / "bin", "venv")
    for where in (clone, workspace):  # the clone's .venv wins over PATH, also from the nested workspace
        assert launch(where, {**bare, "PATH": f"{on_path}:/usr/bin:/bin"}).stdout == "venv notebook x\n"


def test_every_stage_command_uses_the_launcher():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    cmds = [(s.get("do") or s)["cmd"] for s in stages.values()]
    assert cmds and all(c.startswith("bin/medvlp notebook ") for c in cmds), cmds
    assert os.access(LAUNCHER, os.X_OK)
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert all(s["cmd"].startswith("bin/medvlp notebook ") for s in lock.values())
    expanded = {f"{name}@{key}" if "foreach" in s else name
                for name, s in stages.items() for key in (s.get("foreach") or [None])}
    assert set(lock) == expanded, f"dvc.lock's stages differ from dvc.yaml's: {sorted(set(lock) ^ expanded)}"


# -- 2. a team's round trip over ssh ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with a temporary host key, accepting a temporary user key for this
    user: yields ``(port, user, keyfile, log)``."""
    exe = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if exe is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"no OpenSSH server here: {APT_SSHD}")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder (root only)
    with open(d / "sshd.log", "w") as log:
        proc = subprocess.Popen([exe, "-D", "-e", "-p", str(port), "-f", str(d / "sshd_config")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start:\n{(d / 'sshd.log').read_text()}")
                time.sleep(0.2)
        yield port, getpass.getuser(), d / "user_key", d / "sshd.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_team_round_trip_over_ssh(tiny_project, tmp_path, sshd):
    port, user, keyfile, sshd_log = sshd
    store = tmp_path / "team-remote"
    a = _copy(tiny_project, tmp_path / "a")
    # the remote's address is shared (committed); each member's key is their own (--local: .dvc/config.local)
    dvc(a, "remote", "add", "-d", "team", f"ssh://127.0.0.1:{port}{store}")
    dvc(a, "remote", "modify", "team", "user", user)
    git(a, "add", ".dvc/config")
    git(a, "commit", "-q", "-m", "team remote")
    dvc(a, "remote", "modify", "--local", "team", "keyfile", keyfile)
    start = time.perf_counter()
    try:
        pushed = dvc(a, "push", "--run-cache")
    except AssertionError as e:
        raise AssertionError(f"{e}\nsshd's log:\n{sshd_log.read_text()}") from None
    push_s = time.perf_counter() - start
    # --run-cache pushes DVC's run cache too; it holds nothing here yet: DVC saves a run-cache entry only for a stage
    # whose every output besides metrics and plots is cached (dvc.stage.Stage.run, `no_cache_outs`), and each stage
    # has a `cache: false` figure folder or run_info.json. The round trip needs only the cached outputs and dvc.lock.
    assert (store / "files" / "md5").is_dir() and re.search(r"\d+ files? pushed", pushed), pushed

    start = time.perf_counter()
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", a, b)
    (b / ".venv").symlink_to(_venv_root(), target_is_directory=True)
    dvc(b, "remote", "modify", "--local", "team", "keyfile", keyfile)
    dvc(b, "pull")
    repro = dvc(b, "repro")
    status = dvc(b, "status")
    clone_s = time.perf_counter() - start
    assert _stages_run(repro) == [], repro
    assert "Data and pipelines are up to date" in status, status
    assert dvc_dir_hash(b / "data") == dvc_file_hash(b / "data.dvc")
    for name in ("curated/shards", "text_encoder", "pretrain/fvlm-s0/best.pt", "metrics/scores"):
        assert (b / "reports" / name).exists(), name
    metrics = sorted(p.relative_to(a) for p in (a / "reports" / "metrics").glob("*.json"))
    assert metrics
    for rel in metrics:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel

    # bench/team_remote.py measures the same clone-to-results path (the lead runs it on the real repository)
    bench = _run([sys.executable, REPO / "bench" / "team_remote.py", a, "--workdir", tmp_path / "bench"], tmp_path)
    seconds = re.search(r"clone to results: ([0-9.]+) s", bench)
    assert seconds and "reran nothing" in bench, bench
    print(f"\ntiny project over ssh: push {push_s:.1f} s; clone + pull + repro + status {clone_s:.1f} s\n{bench}")


# -- 3. make data with a broken remote -----------------------------------------------------------------------------


def _small_repo(root: Path, corpus: Path | None = None) -> Path:
    """A git + DVC repository whose data.dvc records ``corpus`` (else one small file)."""
    root.mkdir()
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    if corpus is not None:
        shutil.copytree(corpus, root / "data")
    else:
        (root / "data").mkdir()
        (root / "data" / "manifest.jsonl").write_text('{"id": "team-corpus-1"}\n')
    dvc(root, "add", "-q", "data")
    return root


def _get_data(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medvlp", "get-data"], cwd=root, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("remote", ["ssh", "folder"])
def test_make_data_names_a_failing_remote_and_keeps_a_team_corpus(tmp_path, remote):
    repo = _small_repo(tmp_path / "repo")
    url = f"ssh://127.0.0.1:{_free_port()}/srv/dvc" if remote == "ssh" else str(tmp_path / "no-such-folder")
    dvc(repo, "remote", "add", "-d", "team", url)
    dvc(repo, "remote", "modify", "team", "timeout", "20") if remote == "ssh" else None
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    out = _get_data(repo)
    assert out.returncode == 1, out
    assert f"from the DVC remote 'team' ({url}) failed" in out.stderr
    dvc_error = "Connect call failed" if remote == "ssh" else "do not exist neither locally nor on remote"
    assert dvc_error in out.stderr and "not the synthetic corpus" in out.stderr, out.stderr
    assert not (repo / "data").exists()  # no synthetic corpus in place of the team's


def test_make_data_never_deletes_a_data_folder_that_differs(tmp_path):
    repo = _small_repo(tmp_path / "repo")
    (repo / "data" / "manifest.jsonl").unlink()
    (repo / "data" / "manifest.jsonl").write_text('{"id": "a newer corpus, not yet dvc add-ed"}\n')
    out = _get_data(repo)
    assert out.returncode == 1 and "does not match data.dvc" in out.stderr and "dvc add data" in out.stderr, out
    assert "newer corpus" in (repo / "data" / "manifest.jsonl").read_text()


def test_make_data_regenerates_only_the_synthetic_corpus(tmp_path, monkeypatch, capsys):
    from medvlp.data.fetch import get_data
    from medvlp.data.synthetic import generate_corpus

    small = {"n_figures": 24, "n_studies": 8}
    generate_corpus(tmp_path / "corpus", progress=False, **small)
    repo = _small_repo(tmp_path / "repo", tmp_path / "corpus")
    md5 = dvc_file_hash(repo / "data.dvc")
    url = tmp_path / "no-such-folder"
    dvc(repo, "remote", "add", "-d", "team", url)
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    monkeypatch.setenv("PATH", _env()["PATH"])
    assert get_data(repo, synthetic_md5=md5, synth_kwargs=small) == "regenerated"
    assert f"from the DVC remote 'team' ({url}) failed" in capsys.readouterr().err
    assert dvc_dir_hash(repo / "data") == md5 and "Data and pipelines are up to date" in dvc(repo, "status")
    assert get_data(repo, synthetic_md5=md5) == "present"
    # the same corpus, pushed to a folder remote, is pulled instead of regenerated
    (url).mkdir()
    dvc(repo, "push", "-q")
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    assert get_data(repo, synthetic_md5=md5) == "pulled"
    assert dvc_dir_hash(repo / "data") == md5


# -- 4. data versions ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_data_versions_with_git_tags(tiny_project, tmp_path):
    p = _copy(tiny_project, tmp_path / "p")
    assert git(p, "ls-files", "data") == "", "data/ must be tracked by DVC only, not git"
    git(p, "tag", "v1")
    v1 = dvc_file_hash(p / "data.dvc")
    manifest = p / "data" / "figures" / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)  # bytes: the corpus plants an invalid UTF-8 caption
    manifest.unlink()  # a new file, never an edit through a link into the DVC cache
    manifest.write_bytes(b"".join(lines[:1] + lines[2:]))  # one figure record dropped
    dvc(p, "add", "-q", "data")
    git(p, "commit", "-q", "-m", "corpus v2: one figure fewer", "data.dvc")
    assert _stages_run(dvc(p, "repro", "curate")) == ["curate"]
    git(p, "add", "-A")
    git(p, "commit", "-q", "-m", "curate on corpus v2")
    git(p, "tag", "v2")
    diff = dvc(p, "metrics", "diff", "v1")
    row = next(line for line in diff.splitlines() if "figures.records_read" in line)
    assert "curation.json" in diff and "127" in row and "126" in row, diff

    git(p, "checkout", "v1", "--", "data.dvc")
    dvc(p, "checkout", "data.dvc")
    assert dvc_dir_hash(p / "data") == v1 and manifest.read_bytes().splitlines(keepends=True) == lines
    git(p, "checkout", "v2", "--", "data.dvc")
    dvc(p, "checkout", "data.dvc")
    assert dvc_dir_hash(p / "data") == dvc_file_hash(p / "data.dvc") != v1


# -- 5. experiments ------------------------------------------------------------------------------------------------


def _experiments(show: str) -> list[dict]:
    """Every experiment of ``dvc exp show --json``: ``{"name", "params", "metrics"}`` (params.yaml's and the
    metrics files' data)."""
    found = []
    for commit in json.loads(show):
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                found.append({"name": rev.get("name") or data.get("name"),
                              "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data", {}),
                              "metrics": {k: v.get("data", {}) for k, v in (data.get("metrics") or {}).items()}})
    return found


@pytest.mark.slow
def test_experiment_run_and_queue(tiny_project, tmp_path):
    p = _copy(tiny_project, tmp_path / "p")
    start = time.perf_counter()
    out = dvc(p, "exp", "run", "-S", "zero_shot.n_boot=10")
    run_s = time.perf_counter() - start
    assert _stages_run(out) == ["zero_shot"], out
    assert json.loads((p / "reports/metrics/zero_shot.json").read_text())["n_boot"] == 10
    show = dvc(p, "exp", "show", "--only-changed", "--json")
    exps = _experiments(show)
    assert [e["params"]["zero_shot"]["n_boot"] for e in exps] == [10], show
    assert exps[0]["metrics"]["reports/metrics/zero_shot.json"]["n_boot"] == 10
    assert "zero_shot.n_boot" in dvc(p, "exp", "show", "--only-changed", "--md")

    # queued: runs in a workspace under .dvc/tmp/exps/ (no .venv there: bin/medvlp finds the clone's). DVC's queue
    # starts its worker and each task as `dvc` from PATH (dvc/repo/experiments/queue/celery.py, tasks.py), so PATH
    # gets a folder holding only a `dvc`, still no `medvlp`.
    shim = tmp_path / "dvc-only"
    shim.mkdir()
    (shim / "dvc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dvc "$@"\n')
    (shim / "dvc").chmod(0o755)
    env = _env()
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    start = time.perf_counter()
    dvc(p, "exp", "run", "--queue", "-S", "zero_shot.n_boot=12", env=env)
    dvc(p, "queue", "start", env=env)
    try:
        deadline, status = time.monotonic() + 600, ""
        while time.monotonic() < deadline:
            status = dvc(p, "queue", "status", env=env)
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(5)
        failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
        assert "Success" in status, status + "".join(dvc(p, "queue", "logs", t, ok=False, env=env) for t in failed)
    finally:
        dvc(p, "queue", "stop", ok=False, env=env)
    queued = [e for e in _experiments(dvc(p, "exp", "show", "--json")) if e["params"]["zero_shot"]["n_boot"] == 12]
    assert len(queued) == 1 and queued[0]["metrics"]["reports/metrics/zero_shot.json"]["n_boot"] == 12, queued
    print(f"\ntiny project: dvc exp run {run_s:.1f} s; one queued experiment {time.perf_counter() - start:.1f} s")
