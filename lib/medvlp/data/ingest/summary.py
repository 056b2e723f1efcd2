"""The ingest report: counts by reason, written as ``ingest_report.json`` next to the output and printed.

Bookkeeping identity (tested): ``read == written + skipped``, where ``skipped`` is the sum of the
skip counts by reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medvlp.data.ingest.skip_log import SkipLog

__all__ = ["REPORT_NAME", "IngestSummary"]

REPORT_NAME = "ingest_report.json"


@dataclass
class IngestSummary:
    """What one adapter run read, wrote and skipped.

    Attributes:
        kind: the adapter (``medconcept``, ``roco``, ``ct_rate``, ``dicom``, ``totalseg``).
        source / destination: the paths as given.
        params: the options of the run.
        skips / warnings: bad records (each skipped) and non-fatal findings, by reason.
        read / written: source records seen and output records written.
        outputs: named output paths (manifest, truth, lexicon, report).
        details: adapter-specific statistics (concept spans kept and dropped, CUIs without a concept, ...).
    """

    kind: str
    source: str
    destination: str
    params: dict
    skips: SkipLog
    warnings: SkipLog
    read: int = 0
    written: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.skips.total

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "destination": self.destination,
                "params": self.params, "read": self.read, "written": self.written, "skipped": self.skipped,
                "skips": self.skips.to_dict(), "warnings": self.warnings.to_dict(),
                "outputs": dict(self.outputs), "details": self.details}

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON to ``path`` (its path is recorded in ``outputs['report']``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.outputs["report"] = str(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def text(self) -> str:
        """A few lines for the terminal: the counts, each reason with its first example, the outputs."""
        lines = [f"{self.kind}: {self.read} read, {self.written} written, {self.skipped} skipped"]
        for title, log in (("skipped", self.skips), ("warnings", self.warnings)):
            for reason, entry in log.to_dict().items():
                example = f"  e.g. {entry['examples'][0]}" if entry["examples"] else ""
                lines.append(f"  {title} {reason}: {entry['count']}{example}")
        lines.extend(f"  {name}: {path}" for name, path in self.outputs.items())
        lines.extend(f"  note: {note}" for note in self.details.get("notes", []))
        return "\n".join(lines)
