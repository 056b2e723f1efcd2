"""Every command the README shows, run as written (bash, no activated environment) on copies of the tiny project.

Each ```bash block of README.md is one script. ``HOW`` says, per block (keyed by its first command), how it is run:
in which copy, with which placeholder substitutions (``/path/to/your/corpus``, the ssh host, ...), or why it is not
run here (8 GPUs, the 30-minute ``make reproduce`` that CI's own ``make test`` and the README's timing stand for). A
block the table does not know fails the test, so a new README command cannot go unrun.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_team import _copy, _env, sshd  # noqa: F401  (sshd: the real OpenSSH server fixture)

from medvlp.data.dirhash import dvc_dir_hash, dvc_file_hash

REPO = Path(__file__).resolve().parents[1]
RELEASED_FVLM = (".venv/bin/medvlp convert-fvlm /path/to/fvlm_checkpoint.pth external_weights/fvlm_released.pt "
                 "--text-model /path/to/BiomedVLP-CXR-BERT-specialized")
TRAIN_BY_HAND = (".venv/bin/python -m medvlp.train --params params.yaml --model fvlm-s1 "
                 "--out-dir scratch/train/fvlm-s1 [--set optimizer.lr=3e-4]")


def readme_blocks(text: str) -> list[str]:
    """The ```bash blocks of ``text``, each as written."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        code = re.sub(r"\s+#.*$", "", line).strip()
        if code and not code.startswith("#"):
            out.append(code)
    return out


def run_block(block: str, cwd: Path, substitutions: dict[str, str] = {}, timeout: float = 600) -> str:  # noqa: B006
    """Run ``block`` (after ``substitutions``) with bash -e in ``cwd``, without the environment on PATH."""
    script = block
    for old, new in substitutions.items():
        assert old in script, f"README no longer contains {old!r}: update HOW in {__file__}"
        script = script.replace(old, new)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=timeout)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"README block failed ({out.returncode}):\n{script}\n---\n{text}"
    return text


#: first command of a block -> how the test treats it ("run" blocks have a function below; others say why not).
HOW = {
    "make reproduce": "not here: `make test` is what CI runs; `make reproduce` is timed on a fresh clone (README)",
    TRAIN_BY_HAND: "run",
    ".venv/bin/medvlp size paper -o params.yaml": "run",
    "rm -rf data && cp -r /path/to/your/corpus data": "run",
    ".venv/bin/dvc remote add -d team ssh://dvc.example.org/srv/dvc/medvlp": "run",
    "git clone <repository> medvlp && cd medvlp": "run",
    ".venv/bin/dvc add data": "run",
    ".venv/bin/dvc exp run -S zero_shot.n_boot=10": "run",
    ".venv/bin/hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224":
        "not here: downloads (CI reaches package registries only); tests/test_external_models.py loads a cached "
        "hub model, a saved Hugging Face model and a local open_clip file offline, as the stage does after this",
    RELEASED_FVLM: "run",
    ".venv/bin/dvc exp run --queue -S 'zero_shot.local_weight=0.25,0.5,0.75'":
        "not here: its lr sweep retrains every model; tests/test_team.py::test_queued_experiment runs "
        "`dvc exp run --queue` + `dvc queue start` + `dvc exp show` on one value",
}


def _blocks() -> dict[str, str]:
    return {commands(b)[0]: b for b in readme_blocks((REPO / "README.md").read_text("utf-8"))}


def test_every_readme_block_is_known():
    blocks = _blocks()
    assert len(blocks) >= 8
    unknown = sorted(set(blocks) - set(HOW))
    assert not unknown, f"README blocks this test does not run or explain: {unknown}; add them to HOW"
    stale = sorted(set(HOW) - set(blocks))
    assert not stale, f"HOW names blocks the README no longer has: {stale}"


def test_commands_join_continuations_and_drop_comments():
    block = "# a comment\ntorchrun --nnodes=2 \\\n    -m medvlp.train --model x   # trailing\n\nls\n"
    assert commands(block) == ["torchrun --nnodes=2 -m medvlp.train --model x", "ls"]


@pytest.mark.slow
def test_one_stage_by_hand_and_the_paper_size(tiny_project, tmp_path):
    blocks = _blocks()
    work = _copy(tiny_project, tmp_path / "repo")
    train = blocks[TRAIN_BY_HAND]
    out = run_block(train, work, {"[--set optimizer.lr=3e-4]": "--set optimizer.lr=3e-4"})
    assert '"model": "fvlm"' in out or "fvlm" in out
    info = (work / "scratch/train/fvlm-s1/run_info.json").read_text()
    assert '"lr": 0.0003' in info, "the --set override did not reach the run"
    assert "Data and pipelines are up to date" in run_block(".venv/bin/dvc status", work)

    paper = blocks[".venv/bin/medvlp size paper -o params.yaml"]
    gpu_lines = [c for c in commands(paper) if c.startswith("torchrun")]
    # the torchrun lines need 8 GPUs per node; the same entry point runs under torchrun in test_train_distributed
    assert len(gpu_lines) == 2
    run_block("\n".join(c for c in commands(paper) if not c.startswith("torchrun")), work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["pretrain"]["models"]["conceptclip"]["stages"][0]["steps"] > 1000, "paper recipe not merged"


@pytest.mark.slow
def test_bring_your_own_data(tiny_project, tmp_path):
    work = _copy(tiny_project, tmp_path / "repo")
    corpus = shutil.copytree(work / "data", tmp_path / "your-corpus")
    out = run_block(_blocks()["rm -rf data && cp -r /path/to/your/corpus data"], work,
                    {"/path/to/your/corpus": str(corpus)})
    assert "Running stage" not in out, "the same corpus under another path must rerun nothing"


@pytest.mark.slow
def test_working_as_a_team(tiny_project, tmp_path, sshd):  # noqa: F811
    port, user, keyfile, _ = sshd
    blocks = _blocks()
    a = _copy(tiny_project, tmp_path / "a")
    store = tmp_path / "team-remote"
    setup = blocks[".venv/bin/dvc remote add -d team ssh://dvc.example.org/srv/dvc/medvlp"]
    run_block(setup, a, {"ssh://dvc.example.org/srv/dvc/medvlp": f"ssh://127.0.0.1{store}",
                         "user alice": f"user {user}", "port 22": f"port {port}", "~/.ssh/id_ed25519": str(keyfile)})
    clone = blocks["git clone <repository> medvlp && cd medvlp"]
    out = run_block(clone, tmp_path, {"<repository>": str(a), "make venv": f"ln -s {sys.prefix} .venv",
                                      "~/.ssh/id_ed25519": str(keyfile)})
    assert "Running stage" not in out and "Data and pipelines are up to date" in out, out

    versions = blocks[".venv/bin/dvc add data"]
    v1 = dvc_file_hash(a / "data.dvc")
    run_block("git tag v1 && echo 'corpus notes' > data/NOTES.txt", a)  # "after changing data/" (curation ignores it)
    out = run_block(versions, a)
    assert re.findall(r"Running stage '([^']+)'", out) == ["curate"], out
    assert dvc_file_hash(a / "data.dvc") == v1 and dvc_dir_hash(a / "data") == v1, "v1's corpus not restored"

    exp = blocks[".venv/bin/dvc exp run -S zero_shot.n_boot=10"]
    out = run_block(exp, _copy(tiny_project, tmp_path / "exp"))
    assert re.findall(r"Running stage '([^']+)'", out) == ["zero_shot"], out
    assert "zero_shot.n_boot" in out


def _yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)]


def test_released_model_params_are_what_the_stages_take():
    from medvlp.eval.external import SPEC_KEYS, SPEC_KINDS

    (shown,) = [b for b in _yaml_blocks((REPO / "README.md").read_text("utf-8")) if "zero_shot" in b]
    params = yaml.safe_load((REPO / "params.yaml").read_text("utf-8"))
    specs = shown["zero_shot"]["external_models"]
    assert set(shown) <= set(params) and "external_models" in params["zero_shot"] and \
        "external_models" in params["explain"]
    assert {k for spec in specs.values() for k in spec if k in SPEC_KINDS} == set(SPEC_KINDS)
    for name, spec in specs.items():
        (kind,) = [k for k in SPEC_KINDS if k in spec]
        assert set(spec) <= set(SPEC_KEYS[kind]), name
    assert set(shown["explain"]["external_models"]) <= set(specs)


@pytest.mark.slow
def test_score_released_fvlm_on_ct_rate(tiny_project, tmp_path):
    from test_ct_rate_protocol import VOLUMES
    from test_fvlm_convert import OfficialFVLM, _config, _official_state
    from test_ingest_fixtures import CtStudy, write_ct_rate
    from test_train_fixtures import write_text_encoder
    from transformers import BertModel

    encoder = write_text_encoder(tmp_path / "cxr_bert")
    torch.manual_seed(1)
    official = OfficialFVLM(BertModel.from_pretrained(str(encoder), add_pooling_layer=False))
    checkpoint = tmp_path / "fvlm_checkpoint.pth"
    torch.save({"model": _official_state(official)}, checkpoint)
    config = tmp_path / "fvlm_tiny.json"
    config.write_text(json.dumps(_config(encoder)))
    studies = [CtStudy(f"{name}.nii.gz", positives=pos, seed=i + 1) for i, (name, pos) in enumerate(VOLUMES)]
    dataset, segs = write_ct_rate(tmp_path / "CT-RATE", studies, split="valid")

    work = _copy(tiny_project, tmp_path / "repo")
    run_block(_blocks()[RELEASED_FVLM], work, {
        "/path/to/fvlm_checkpoint.pth": str(checkpoint),
        "--text-model /path/to/BiomedVLP-CXR-BERT-specialized": f"--config {config}",
        "/path/to/CT-RATE/dataset": str(dataset), "/path/to/CT-RATE/segmentations": str(segs)})
    for style in ("fvlm", "normal"):
        result = json.loads((work / "scratch/ct_rate" / f"ct_rate_{style}.json").read_text())
        scored = {k: v for k, v in result["labels"].items() if v["auc"] is not None}
        assert scored and all(0.0 <= v["auc"] <= 1.0 for v in scored.values()), style
        assert (work / "scratch/ct_rate" / f"ct_rate_{style}_scores.parquet").is_file()
    assert (work / "external_weights/fvlm_released.pt").is_file()
    # the new weights file is a dependency of exactly the two stages that score released models
    status = run_block(".venv/bin/dvc status", work)
    changed = sorted(line[:-1] for line in status.splitlines() if line and not line[0].isspace())
    assert changed == ["explain", "zero_shot"] and status.count("modified:           external_weights") == 2, status
