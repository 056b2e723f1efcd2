"""``dvc plots show`` / ``dvc plots diff`` rendered to HTML that works offline, checked in headless Chromium.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, which a closed network cannot reach: the
page renders nothing and no error says so. :func:`html_template` is a ``--html-template`` for DVC that
leaves out DVC's ``{scripts}`` (the CDN tags) and inlines instead the vega / vega-lite 5 / vega-embed bundle
that the ``vl-convert-python`` wheel ships, plus a small shim around ``vegaEmbed`` that renders to SVG and,
once every plot has settled, writes what each one drew (data-mark items per revision, SVG elements) into a
``<pre id="medvlp-plots-status">`` element. :func:`check_plots` renders the plots of a repository with that
template, loads the page in headless Chromium (``--dump-dom`` after a virtual-time budget) and reports each
plot that dvc.yaml declares but that did not draw: missing from the page, a vega error, no data (a missing
file, or a ``y:`` column the file lacks: DVC only warns, exits 0 and writes an empty chart), no visible data
mark (values vega cannot place, e.g. all NaN) or a revision whose data drew nothing.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

APT_INSTALL = "apt-get install -y chromium chromium-driver"
# The flags every Chromium run here gets (a closed network, no profile, root in CI), plus a fresh --user-data-dir.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")
VEGA_LITE_VERSION = "5.21"  # DVC's templates are vega-lite v5 specs
STATUS_ID = "medvlp-plots-status"
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")
PAGE_WIDTH = 1600

# Wraps vegaEmbed: SVG renderer, no action menu, and a record per plot element of what its scenegraph and its
# SVG hold once rendered. Data marks are the visible items (opacity not 0, at a finite x and y) of marks of
# role "mark" (not axes, legends, titles), less the voronoi cells DVC's templates add for hovering; the hover
# rule and points are opacity 0 until hovered. Image plots (<img>) are recorded on load.
SHIM_JS = r"""
(function () {
  const embed = window.vegaEmbed;
  const results = {};
  const pending = [];
  const errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message || e)); });
  function finite(v) { return typeof v === 'number' && isFinite(v); }
  function visible(it, marktype) {
    const placed = marktype === 'path' || marktype === 'shape' || (finite(it.x) && finite(it.y));
    return placed && it.opacity !== 0 && !(it.fillOpacity === 0 && it.strokeOpacity === 0);
  }
  function walk(node, out) {
    if (!node || !node.items) return;
    if (node.marktype !== 'group' && node.role === 'mark' && !/_voronoi$/.test(node.name || '')) {
      for (const it of node.items) {
        if (!visible(it, node.marktype)) continue;
        out.items += 1;
        const d = it.datum || {};
        if (d.rev !== undefined) out.revs.add(String(d.rev));
      }
    }
    for (const it of node.items) if (it.items) for (const child of it.items) walk(child, out);
  }
  function specValues(spec) {
    const values = spec && spec.data && spec.data.values;
    return Array.isArray(values) ? values : null;
  }
  function specRevs(values) {
    const revs = new Set();
    for (const v of values || []) if (v && v.rev !== undefined) revs.add(String(v.rev));
    return Array.from(revs).sort();
  }
  window.vegaEmbed = function (el, spec, opts) {
    const id = String(el).replace(/^#/, '');
    const values = specValues(spec);
    const rec = results[id] = {kind: 'vega', status: 'pending', spec_revs: specRevs(values),
                               n_values: values === null ? 0 : values.length};
    let p;
    try {
      p = embed(el, spec, Object.assign({renderer: 'svg', actions: false}, opts || {}));
    } catch (err) {
      p = Promise.reject(err);
    }
    p = p.then(function (res) {
      const out = {items: 0, revs: new Set()};
      walk(res.view.scenegraph().root, out);
      const node = document.getElementById(id);
      rec.status = 'ok';
      rec.items = out.items;
      rec.revs = Array.from(out.revs).sort();
      rec.svg_marks = node ? Array.from(node.querySelectorAll(
        'svg g.role-mark:not([class*="voronoi"]) > :is(path, rect, line, circle, text, image)'))
        .filter(function (el) { return getComputedStyle(el).opacity !== '0' && el.getAttribute('opacity') !== '0'; })
        .length : 0;
      return res;
    }, function (err) { rec.status = 'error'; rec.error = String((err && err.message) || err); });
    pending.push(p);
    return p;
  };
  window.addEventListener('load', function () {
    for (const img of document.querySelectorAll('div[id] img')) {
      const div = img.closest('div[id]');
      const rec = results[div.id] = results[div.id] || {kind: 'image', status: 'ok', items: 0, svg_marks: 0};
      if (img.complete && img.naturalWidth > 0) rec.items += 1;
    }
    Promise.allSettled(pending).then(function () {
      const pre = document.createElement('pre');
      pre.id = '@STATUS_ID@';
      pre.textContent = JSON.stringify({plots: results, errors: errors,
                                        height: document.documentElement.scrollHeight});
      document.body.appendChild(pre);
    });
  });
})();
""".replace("@STATUS_ID@", STATUS_ID)

PAGE_CSS = """
body { font-family: sans-serif; display: flex; flex-wrap: wrap; gap: 12px; margin: 12px; }
body > div[id] { flex: 0 0 auto; }
#@STATUS_ID@ { display: none; }
""".replace("@STATUS_ID@", STATUS_ID)


@functools.lru_cache(maxsize=1)
def _vega_bundle() -> str:
    try:
        import vl_convert
    except ImportError as err:  # a dev dependency (pyproject's dev extra)
        raise RuntimeError("rendering DVC plots offline needs vl-convert-python (pip install -e '.[dev]')") from err
    return vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)


def html_template() -> str:
    """An HTML template for ``dvc plots show/diff --html-template``: vega inlined, no CDN, plots tiled."""
    bundle = _vega_bundle()
    if any(p in bundle for p in DVC_PLACEHOLDERS):  # DVC fills the template with str.replace
        raise RuntimeError("the vega bundle contains one of DVC's template placeholders")
    bundle = bundle.replace("</script", "<\\/script")
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n{refresh_tag}\n<title>DVC plots</title>\n"
            f"<script>\n{bundle}\n</script>\n<script>{SHIM_JS}</script>\n<style>{PAGE_CSS}</style>\n"
            "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n")


def find_chromium() -> str | None:
    """The Chromium executable: $MEDVLP_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("MEDVLP_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _plot_id(name: str) -> str:
    from dvc_render.base import Renderer

    return Renderer.remove_special_chars(name)


def declared_plots(repo: Path) -> list[str]:
    """The plots dvc.yaml declares: stage outputs under ``plots:`` and top-level ``plots:`` entries."""
    from dvc.repo import Repo

    with Repo(os.fspath(repo)) as dvc_repo:
        index = dvc_repo.index
        names = [str(out) for stage in index.stages for out in stage.outs if out.plot]
        for definitions in getattr(index, "_plots", {}).values():  # top-level plots: {id: props} or a path
            for entry in definitions:
                names.extend(entry if isinstance(entry, dict) else [entry])
    return list(dict.fromkeys(names))


def render_html(repo: Path, out_dir: Path, diff: list[str] | None = None) -> tuple[Path, str]:
    """``dvc plots show`` (or ``dvc plots diff *diff``) into ``out_dir/index.html`` with :func:`html_template`.

    Returns the page and DVC's output (its warnings name plots it could not fill)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medvlp-plots-") as tmp:
        template = Path(tmp) / "template.html"
        template.write_text(html_template(), "utf-8")
        cmd = [sys.executable, "-m", "dvc", "plots", *(["diff", *diff] if diff is not None else ["show"]),
               "-o", os.fspath(out_dir), "--html-template", os.fspath(template)]
        run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed in {repo}:\n{run.stdout}\n{run.stderr}")
    return out_dir / "index.html", run.stdout + run.stderr


def _chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="medvlp-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def browse(page: Path, chromium: str, screenshot: Path | None = None, budget_ms: int = 30000,
           timeout: float = 180) -> dict:
    """Load ``page`` in headless Chromium and return the shim's status ({plots, errors, height}).

    With ``screenshot``, a second run saves the whole page (its height from the first run) as PNG."""
    url = Path(page).resolve().as_uri()
    run = _chromium(chromium, [f"--virtual-time-budget={budget_ms}", f"--window-size={PAGE_WIDTH},1000",
                               "--dump-dom", url], timeout)
    match = re.search(rf'<pre id="{STATUS_ID}">(.*?)</pre>', run.stdout, re.S)
    if match is None:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{page}: the page never finished rendering in Chromium (exit {run.returncode}):\n"
                           f"{tail}")
    status = json.loads(html.unescape(match.group(1)))
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        height = int(min(max(status.get("height") or 1000, 200), 16000))
        shot = _chromium(chromium, [f"--virtual-time-budget={budget_ms}", f"--window-size={PAGE_WIDTH},{height}",
                                    f"--screenshot={screenshot}", url], timeout)
        if not screenshot.is_file():
            raise RuntimeError(f"Chromium wrote no screenshot {screenshot} (exit {shot.returncode}):\n{shot.stderr}")
    return status


@dataclass
class PlotsReport:
    """What :func:`check_plots` found: ``drawn`` plots, and for each plot that did not draw, why."""

    page: Path
    declared: list[str]
    drawn: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    page_errors: list[str] = field(default_factory=list)
    dvc_output: str = ""
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.page_errors

    def summary(self) -> str:
        lines = [f"{len(self.drawn)}/{len(self.declared)} declared plots drew in Chromium: {self.page}"]
        lines += [f"  NOT DRAWN {name}: {why}" for name, why in self.problems.items()]
        lines += [f"  page error: {err}" for err in self.page_errors]
        said = [line for line in dict.fromkeys(self.dvc_output.strip().splitlines()) if "file://" not in line]
        if self.problems and said:
            lines += ["dvc said:", *("  " + line for line in said[:20])]
        if self.screenshot is not None:
            lines.append(f"screenshot: {self.screenshot}")
        return "\n".join(lines)


def _problem(record: dict | None) -> str | None:
    if record is None:
        return "not on the page (dvc plots rendered no data for it: missing file, or a template error)"
    if record.get("status") != "ok":
        return f"vega failed: {record.get('error', record.get('status'))}"
    if record.get("n_values") == 0:
        return ("no data: DVC filled in nothing (file missing or empty: dvc repro / dvc pull? an x / y field "
                "the file lacks? DVC only warns, see below)")
    if not record.get("items") or (record.get("kind") == "vega" and not record.get("svg_marks")):
        return "drew no data marks"
    missing = sorted(set(record.get("spec_revs", [])) - set(record.get("revs", [])))
    if missing and record.get("revs"):
        return f"revision(s) {', '.join(missing)} drew nothing"
    return None


def check_plots(repo: Path, out_dir: Path, diff: list[str] | None = None, screenshot: Path | None = None,
                chromium: str | None = None) -> PlotsReport:
    """Render the plots of ``repo`` (show, or diff against ``diff`` revisions) and check each declared one drew."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"headless Chromium not found: {APT_INSTALL}")
    page, dvc_output = render_html(repo, out_dir, diff)
    status = browse(page, chromium, screenshot=screenshot)
    report = PlotsReport(page=page, declared=declared_plots(repo), page_errors=list(status.get("errors", [])),
                         dvc_output=dvc_output, screenshot=screenshot)
    records = status.get("plots", {})
    for name in report.declared:
        problem = _problem(records.get(_plot_id(name)))
        if problem is None:
            report.drawn.append(name)
        else:
            report.problems[name] = problem
    return report


def main(args) -> int:
    """``medvlp plots``: exit 0 when every declared plot drew, 1 when one did not, 2 without Chromium."""
    try:
        report = check_plots(args.repo, args.out, diff=args.diff, screenshot=args.screenshot)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


__all__ = ["APT_INSTALL", "CHROMIUM_FLAGS", "PlotsReport", "browse", "check_plots", "declared_plots",
           "find_chromium", "html_template", "render_html"]
