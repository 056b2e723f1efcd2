"""Run records: the per-step CSV logs and ``run_info.json`` (provenance: git SHA, params, versions,
device) of a training run (:class:`RunRecords`)."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from medvlp.metrics_json import write_json

#: Distributions whose versions ``run_info.json`` records.
TRACKED_PACKAGES = ("medvlp", "torch", "torchvision", "open_clip_torch", "monai", "numpy", "webdataset",
                    "nibabel")


TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
RUN_INFO = "run_info.json"


class CSVLog:
    """Append-only CSV with a fixed header; rows are flushed at once (a killed run keeps its log).

    On resume, :meth:`truncate` drops the rows logged after the checkpoint, so the log of a
    resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]):
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def start(self, keep_until_step: int | None = None) -> None:
        """Start a fresh file (``None``) or keep the existing rows with ``step <= keep_until_step``."""
        rows = []
        if keep_until_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in self.columns})

    truncate = start

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})


def _fmt(value: Any) -> Any:
    return f"{value:.9g}" if isinstance(value, float) else value


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV log as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def git_revision(repo: str | Path = ".") -> dict[str, Any]:
    """``{"sha": HEAD commit or None, "dirty": bool or None}`` of the git checkout around ``repo``."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def package_versions(names: Sequence[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe_device(device: torch.device, world_size: int) -> dict[str, Any]:
    """The hardware of a run: device type and name, processes, CPU threads."""
    info: dict[str, Any] = {"type": device.type, "world_size": world_size,
                            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class RunRecords:
    """What a training run writes about itself in ``out_dir``.

    ``train_log.csv``: one row per optimiser step (``step, stage, epoch, samples, lr, loss``, every loss
    term, ``logit_scale, grad_norm, samples_per_s, elapsed_s``); ``val_log.csv``: one row per validation
    (``step, stage, val_loss``, ``val_<term>``, ``val_samples``); ``run_info.json``: status, params and
    provenance (:meth:`write_info`). Only rank 0 writes; every rank keeps the last logged row.

    Args:
        out_dir: the run's folder.
        terms: the loss terms logged besides ``loss``.
    """

    def __init__(self, out_dir: str | Path, terms: Sequence[str]):
        self.out_dir = Path(out_dir)
        self.terms = list(terms)
        self.train_log = CSVLog(self.out_dir / TRAIN_LOG,
                                ["step", "stage", "epoch", "samples", "lr", "loss", *self.terms, "logit_scale",
                                 "grad_norm", "samples_per_s", "elapsed_s"])
        self.val_log = CSVLog(self.out_dir / VAL_LOG,
                              ["step", "stage", "val_loss", *[f"val_{t}" for t in self.terms], "val_samples"])
        self.last_row: dict[str, Any] = {}

    def start(self, resumed_step: int | None) -> None:
        """Start fresh logs (``None``), or keep the rows up to the step a run resumes from (and its last row)."""
        self.train_log.start(resumed_step)
        self.val_log.start(resumed_step)
        if resumed_step is not None:
            rows = read_csv(self.train_log.path)
            self.last_row = dict(rows[-1]) if rows else {}

    def log_step(self, row: dict[str, Any], *, write: bool) -> None:
        """Keep ``row`` as the last step's; append it to ``train_log.csv`` when ``write`` (rank 0)."""
        self.last_row = row
        if write:
            self.train_log.write(row)

    def log_validation(self, step: int, stage: int, terms: dict[str, float], n_samples: int) -> None:
        """Append a validation row (``terms`` holds ``loss`` and the other terms, averaged over batches)."""
        self.val_log.write({"step": step, "stage": stage, "val_loss": terms["loss"], "val_samples": n_samples,
                            **{f"val_{k}": v for k, v in terms.items() if k != "loss"}})

    def final_losses(self) -> dict[str, float]:
        """The last logged step's loss terms."""
        return {k: float(self.last_row[k]) for k in ["loss", *self.terms] if self.last_row.get(k, "") != ""}

    def write_info(self, info: dict[str, Any]) -> Path:
        """Write ``run_info.json``: ``info`` plus ``updated`` (UTC), the log file names and
        ``mean_samples_per_s`` (over the logged steps after the first)."""
        rows = read_csv(self.train_log.path) if self.train_log.path.is_file() else []
        rates = [float(r["samples_per_s"]) for r in rows[1:] if r.get("samples_per_s")]
        info = {**info, "updated": utc_now(), "mean_samples_per_s": sum(rates) / len(rates) if rates else None}
        info["files"] = {**info.get("files", {}), "train_log": TRAIN_LOG, "val_log": VAL_LOG}
        return write_json(self.out_dir / RUN_INFO, info, sort_keys=True, default=str)
