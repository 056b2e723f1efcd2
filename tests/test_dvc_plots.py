"""`dvc plots show` / `dvc plots diff` of the tiny project render offline and every declared plot draws in
headless Chromium (medvlp.dvc_plots, `make plots`); a plot on a column its file lacks is caught."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from medvlp.dvc_plots import APT_INSTALL, check_plots, find_chromium

pytestmark = pytest.mark.slow

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=f"needs headless Chromium: {APT_INSTALL}")


@pytest.fixture
def project(tiny_project, tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(tiny_project, dst, symlinks=True)
    return dst


@needs_chromium
def test_every_declared_plot_draws_offline_show_and_diff(project, tmp_path):
    shot = tmp_path / "figures" / "dvc_plots.png"
    report = check_plots(project, tmp_path / "show", screenshot=shot)
    assert report.ok, report.summary()
    # every pretrain run declares its train and val log; all of them drew, nothing else was expected
    runs = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["pretrain"]["foreach"]
    assert sorted(report.drawn) == sorted(f"reports/pretrain/{run}/{log}.csv" for run in runs
                                          for log in ("train_log", "val_log"))
    page = report.page.read_text()
    assert not re.search(r"<script[^>]+src=|https?://cdn", page), "the page must not load scripts from a CDN"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # dvc plots diff HEAD after a run logged one more step: each plot draws both revisions
    log = project / "reports/pretrain/clip-s0/train_log.csv"
    last = log.read_text().strip().splitlines()[-1].split(",")
    log.write_text(log.read_text() + ",".join([str(int(last[0]) + 1), *last[1:]]) + "\n")
    diff = check_plots(project, tmp_path / "diff", diff=["HEAD"])
    assert diff.ok, diff.summary()
    assert len(diff.drawn) == len(report.drawn)


@needs_chromium
def test_a_plot_on_a_missing_column_is_reported(project, tmp_path):
    dvc_yaml = project / "dvc.yaml"
    text = dvc_yaml.read_text()
    assert text.count("y: val_loss") == 1
    dvc_yaml.write_text(text.replace("y: val_loss", "y: no_such_column"))
    report = check_plots(project, tmp_path / "show")
    assert not report.ok
    # DVC only warns (exit 0) and writes an empty chart for each val log; the train logs still draw
    assert sorted(report.problems) == sorted(p for p in report.declared if p.endswith("/val_log.csv"))
    assert all(why.startswith("no data") for why in report.problems.values()), report.summary()
    assert "no_such_column" in report.summary()  # DVC's warning, quoted
    assert sorted(report.drawn) == sorted(p for p in report.declared if p.endswith("/train_log.csv"))
    assert "NOT DRAWN reports/pretrain/clip-s0/val_log.csv" in report.summary()


@needs_chromium
def test_a_plot_whose_values_do_not_draw_is_reported(project, tmp_path):
    # DVC fills the chart without a word, but every val_loss is NaN: vega places no mark, only the browser sees it
    log = project / "reports/pretrain/clip-s0/val_log.csv"
    header, *rows = log.read_text().strip().splitlines()
    column = header.split(",").index("val_loss")
    rows = [",".join("nan" if i == column else v for i, v in enumerate(row.split(","))) for row in rows]
    log.write_text("\n".join([header, *rows]) + "\n")
    report = check_plots(project, tmp_path / "show")
    assert report.problems == {"reports/pretrain/clip-s0/val_log.csv": "drew no data marks"}, report.summary()
    assert len(report.drawn) == len(report.declared) - 1
