"""The ingest command line: ``python -m medvlp.data.ingest`` and ``medvlp ingest`` print the summary, write
the report, and exit 1 naming file and line when ``--strict`` meets a bad record."""

from __future__ import annotations

import json
import subprocess
import sys

from test_ingest_fixtures import medconcept_corpus, write_jsonl_lines

from medvlp.cli import main as medvlp_main
from medvlp.data.ingest.cli import main


def test_module_entry_point_runs(tmp_path):
    meta, images = medconcept_corpus(tmp_path / "src", n=2)
    done = subprocess.run([sys.executable, "-m", "medvlp.data.ingest", "medconcept", str(meta), str(tmp_path / "data"),
                           "--images", str(images), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "medconcept: 2 read, 2 written, 0 skipped"
    assert json.loads((tmp_path / "data" / "figures" / "ingest_report.json").read_text())["written"] == 2


def test_summary_counts_and_strict_exit(tmp_path, capsys):
    meta, images = medconcept_corpus(tmp_path / "src", n=3)
    lines = meta.read_text().splitlines()
    write_jsonl_lines(meta, [*lines, '{"caption": "x", "image": "nowhere.png", "pmc": "1"}'])
    assert main(["medconcept", str(meta), str(tmp_path / "data"), "--images", str(images), "--quiet",
                 "--threshold", "0.95"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "medconcept: 4 read, 3 written, 1 skipped"
    assert f"  skipped missing_file: 1  e.g. {meta} line 4: image 'nowhere.png' not found" in out
    assert "  warnings below_threshold: 6" in out                  # 0.91 and 0.55 spans of each caption

    assert medvlp_main(["ingest", "medconcept", str(meta), str(tmp_path / "data2"), "--images", str(images),
                        "--strict", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medvlp ingest medconcept: {meta} line 4: image 'nowhere.png' not found")
    assert "[missing_file]" in err and "without --strict" in err
