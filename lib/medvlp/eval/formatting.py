"""How every report, table and notebook writes an estimate with its CI and a p-value.

``fmt_ci(0.812, 0.771, 0.850)`` -> ``0.812 [0.771, 0.850]``; ``fmt_boot`` reads a bootstrap dict
(``auc`` / ``estimate`` and ``ci_low`` / ``ci_high``); ``fmt_p`` writes ``<0.001`` below a thousandth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def fmt_ci(value: float, low: float | Sequence[float], high: float | None = None, digits: int = 3) -> str:
    """``value [low, high]`` with ``digits`` decimals; ``low`` may be the pair ``[low, high]``
    (``nan`` stays ``nan``)."""
    if high is None:
        low, high = low
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_boot(d: Mapping[str, float], digits: int = 3, key: str = "auc") -> str:
    """``d[key] [d["ci_low"], d["ci_high"]]``: a bootstrap result of :mod:`medvlp.eval.metrics`."""
    return fmt_ci(d[key], d["ci_low"], d["ci_high"], digits)


def fmt_p(p: float | None) -> str:
    """A p-value: ``-`` when absent or NaN, ``<0.001`` when tiny, else three decimals."""
    if p is None or p != p:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
