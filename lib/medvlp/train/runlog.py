"""Run records: the per-step CSV logs and ``run_info.json`` (provenance: git SHA, params, versions,
device)."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: Distributions whose versions ``run_info.json`` records.
TRACKED_PACKAGES = ("medvlp", "torch", "torchvision", "open_clip_torch", "monai", "numpy", "webdataset",
                    "nibabel")


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


def write_json(path: str | Path, obj: dict) -> None:
    """Write JSON atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
