"""Figures of a pre-training run: loss terms, learning rate and throughput against the step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medvlp.train.runlog import read_csv  # noqa: E402

#: Columns of ``train_log.csv`` that are not loss terms.
_NOT_TERMS = {"step", "stage", "epoch", "samples", "lr", "logit_scale", "grad_norm", "samples_per_s", "elapsed_s"}


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key, "") != "" else float("nan") for r in rows]


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(train_log: str | Path, val_log: str | Path | None, path: str | Path,
                         title: str = "") -> Path:
    """Three panels from a run's CSV logs: every loss term (training, thin; validation, markers),
    the learning rate, and samples/s. Stage boundaries are dashed lines. Returns ``path``."""
    rows = read_csv(train_log)
    if not rows:
        raise ValueError(f"{train_log}: no logged step to plot")
    val = read_csv(val_log) if val_log is not None and Path(val_log).is_file() else []
    steps = _column(rows, "step")
    terms = [k for k in rows[0] if k not in _NOT_TERMS and any(r.get(k, "") != "" for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in terms:
        line, = axes[0].plot(steps, _column(rows, key), lw=0.8, alpha=0.8, label=key)
        vkey = "val_loss" if key == "loss" else f"val_{key}"
        if val and vkey in val[0]:
            axes[0].plot(_column(val, "step"), _column(val, vkey), "o", ms=4, color=line.get_color(),
                         label=f"{key} (val)")
    axes[0].set(xlabel="step", ylabel="loss", title="loss terms")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, _column(rows, "lr"), color="tab:purple")
    axes[1].set(xlabel="step", ylabel="learning rate", title="schedule")
    axes[2].plot(steps[1:], _column(rows, "samples_per_s")[1:], color="tab:green", lw=0.8)
    axes[2].set(xlabel="step", ylabel="samples / s", title="throughput")
    stages = _column(rows, "stage")
    for i in range(1, len(rows)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(steps[i], ls="--", color="grey", lw=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_text_encoder_curves(train_log: str | Path, path: str | Path) -> Path:
    """Two panels from the ``pretrain_text`` log: the masked-LM loss per step with the held-out loss,
    and the held-out accuracy on the masked tokens. Returns ``path``."""
    rows = read_csv(train_log)
    if not rows:
        raise ValueError(f"{train_log}: no logged step to plot")
    steps = _column(rows, "step")
    val = [r for r in rows if r.get("val_loss", "") != ""]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(steps, _column(rows, "loss"), lw=0.8, label="training")
    axes[0].plot(_column(val, "step"), _column(val, "val_loss"), "o-", ms=4, label="held out")
    axes[0].set(xlabel="step", ylabel="masked-LM loss", title="loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(_column(val, "step"), _column(val, "val_accuracy"), "o-", ms=4, color="tab:green")
    axes[1].set(xlabel="step", ylabel="accuracy on masked tokens", title="held-out accuracy", ylim=(0, 1))
    return _save(fig, path)
