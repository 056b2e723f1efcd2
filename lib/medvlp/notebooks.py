"""Stage notebooks: run by the pipeline with Papermill, or by hand in JupyterLab.

Every notebook under ``notebooks/`` has one cell tagged ``parameters`` that reads its stage's section of
``params.yaml`` through :func:`notebook_parameters`::

    from medvlp.notebooks import notebook_parameters
    globals().update(notebook_parameters("03_zero_shot"))

**By the pipeline.** DVC calls ``medvlp notebook <source> <executed> --section <stage> [--item I] [--extra S]``
(:func:`run_notebook`). That sets :data:`PIPELINE_ENV` in the kernel's environment, so the parameters cell
does nothing and Papermill injects the section in the next cell; outputs go to the paths of ``params.yaml``
and the executed copy is a stage output under ``reports/notebooks/``.

**By hand** (JupyterLab's "Run All", no Papermill, no DVC). :func:`notebook_parameters` finds the stage that
runs the notebook in ``dvc.yaml`` (the one source of truth for ``--section``, ``--item``, ``--extra``), reads
the same values from ``params.yaml`` as ``medvlp notebook`` would (:func:`stage_notebook_params`) and moves
every parameter that names one of *this* stage's outputs (its ``outs``, ``metrics`` and ``plots``) to the
same relative path under ``scratch/<notebook>/`` (git-ignored); inputs, such as another stage's outputs, are
left alone. Outputs a notebook writes at a fixed path go through :func:`output_path`. Nothing DVC tracks
changes, so ``dvc status`` stays clean.

Source notebooks are kept without outputs (:func:`strip_outputs`; ``make lab`` strips them on save with
:func:`strip_on_save`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat

#: Set to ``"1"`` by :func:`run_notebook` (``medvlp notebook``, the DVC stages) in the environment of the kernel
#: Papermill starts: the notebook runs as a pipeline stage. Absent, a notebook runs by hand.
PIPELINE_ENV = "MEDVLP_PIPELINE_RUN"

#: Hand runs write their outputs under ``<SCRATCH>/<notebook stem>/`` (git-ignored).
SCRATCH = "scratch"

#: The folder of the stage notebooks, relative to the repository root.
NOTEBOOK_DIR = "notebooks"


def add_notebook_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``medvlp notebook`` (the CLI and :func:`find_notebook_stage` both parse them here)."""
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--section", required=True, help="params.yaml section (the DVC stage name)")
    parser.add_argument("--item", default=None,
                        help="foreach item: the model, or the run <model>-s<seed> of a pretrain@<model>-s<seed> stage")
    parser.add_argument("--extra", action="append", default=[], metavar="SECTION",
                        help="also pass another params.yaml section whole, as a parameter of that name (e.g. seeds)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser


def stage_notebook_params(everything: dict[str, Any], section: str, item: str | None = None,
                          extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The parameters a stage notebook gets: :func:`~medvlp.params.stage_params` of ``section`` (and ``item``),
    plus each ``extra`` section whole under its own name. ``medvlp notebook`` and :func:`notebook_parameters`
    both call this, so a hand run sees exactly the pipeline's values.

    Raises:
        KeyError: no such section, item or extra section.
    """
    from medvlp.params import stage_params

    params = stage_params(everything, section, item)
    for name in extra:
        if name not in everything:
            raise KeyError(f"--extra {name}: params.yaml has no section {name!r}")
        params[name] = everything[name]
    return params


# ---------------------------------------------------------------------------------------------- dvc.yaml


@dataclass(frozen=True)
class NotebookStage:
    """The DVC stage that runs a notebook, as ``dvc.yaml`` declares it (``foreach`` resolved for one item)."""

    stage: str                 #: the DVC stage name, e.g. ``pretrain@clip-s0``
    section: str               #: ``--section``
    item: str | None           #: ``--item`` (None: not a foreach stage)
    items: tuple[str, ...]     #: every foreach key of the stage (empty: not a foreach stage)
    extra: tuple[str, ...]     #: ``--extra`` sections
    params_file: str           #: ``--params`` (relative to the repository root)
    outputs: tuple[str, ...]   #: the stage's ``outs``, ``metrics`` and ``plots`` paths


_VAR = re.compile(r"\$\{\s*(key|item(?:\.[A-Za-z0-9_-]+)*)\s*\}")


def _substitute(value: Any, key: str, item: Any) -> Any:
    """``${key}``, ``${item}`` and ``${item.<field>}`` of a foreach stage's ``do`` block, replaced."""
    if isinstance(value, dict):
        return {_substitute(k, key, item): _substitute(v, key, item) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, key, item) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, *fields = match[1].split(".")
        if name == "key":
            return str(key)
        got = item
        for f in fields:
            if not isinstance(got, dict) or f not in got:
                return match[0]
            got = got[f]
        return str(got)

    return _VAR.sub(one, value)


def _paths(entries: list | None) -> list[str]:
    """The paths of a stage's ``outs`` / ``metrics`` / ``plots`` list (strings, or one-key dicts of options)."""
    out = []
    for entry in entries or []:
        out.extend([entry] if isinstance(entry, str) else list(entry))
    return out


def _notebook_args(cmd: str | list, stem: str) -> list[str] | None:
    """The arguments after the ``notebook`` subcommand when ``cmd`` runs ``notebooks/<stem>.ipynb`` (whatever
    launches it: ``medvlp``, ``bin/medvlp``, ``python -m medvlp``); else None."""
    for line in [cmd] if isinstance(cmd, str) else cmd:
        try:
            tokens = shlex.split(str(line))
        except ValueError:
            continue
        for i, token in enumerate(tokens[:-1]):
            if token != "notebook":
                continue
            source = PurePosixPath(tokens[i + 1])
            if source.suffix == ".ipynb" and source.stem == stem:
                args = tokens[i + 1:]
                for j, arg in enumerate(args):  # a shell list goes on to other commands
                    if arg in ("&&", "||", ";", "|"):
                        return args[:j]
                return args
    return None


def find_notebook_stage(dvc_yaml: dict[str, Any] | str | Path, stem: str, item: str | None = None) -> NotebookStage:
    """The stage of ``dvc_yaml`` (its parsed text, or its path) whose command runs ``notebooks/<stem>.ipynb``.

    For a ``foreach`` stage, ``item`` is one of its keys (default: the first).

    Raises:
        LookupError: no stage (or several) runs the notebook; ``item`` is not a key of the foreach stage,
            or was given for a stage without ``foreach``.
    """
    from medvlp.params import load_yaml

    if not isinstance(dvc_yaml, dict):
        dvc_yaml = load_yaml(Path(dvc_yaml).read_text("utf-8")) or {}
    found = []
    for name, body in (dvc_yaml.get("stages") or {}).items():
        if "foreach" in body:
            foreach = body["foreach"]
            keys = [str(k) for k in foreach] if isinstance(foreach, dict | list) else []
            template = body.get("do", {})
            if _notebook_args(template.get("cmd", ""), stem) is None:
                continue
            if not keys:
                raise LookupError(f"dvc.yaml stage {name!r}: cannot read its foreach keys ({foreach!r})")
            key = keys[0] if item is None else item
            if key not in keys:
                raise LookupError(f"{stem}: item {item!r} is not a key of dvc.yaml stage {name!r}; "
                                  f"known: {', '.join(keys)}")
            value = foreach[key] if isinstance(foreach, dict) else key
            found.append((f"{name}@{key}", key, tuple(keys), _substitute(template, key, value)))
        elif _notebook_args(body.get("cmd", ""), stem) is not None:
            if item is not None:
                raise LookupError(f"{stem}: item {item!r} given, but dvc.yaml stage {name!r} has no foreach")
            found.append((name, None, (), body))
    if len(found) != 1:
        which = "no stage" if not found else f"stages {[f[0] for f in found]}"
        raise LookupError(f"dvc.yaml: {which} runs {NOTEBOOK_DIR}/{stem}.ipynb with `medvlp notebook`")
    stage, key, keys, body = found[0]
    args = add_notebook_arguments(argparse.ArgumentParser(prog="medvlp notebook", add_help=False)).parse_args(
        _notebook_args(body["cmd"], stem))
    outputs = tuple(_paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots")))
    return NotebookStage(stage=stage, section=args.section, item=args.item, items=keys, extra=tuple(args.extra),
                         params_file=str(args.params), outputs=outputs)


# ---------------------------------------------------------------------------------------------- hand runs


def _normal(path: str) -> PurePosixPath | None:
    """``path`` as a normalised relative POSIX path, or None when it cannot be a repository path."""
    if not path or "\n" in path:
        return None
    norm = os.path.normpath(path.replace("\\", "/"))
    if norm in (".", "..") or norm.startswith(("/", "../")):
        return None
    return PurePosixPath(norm)


def _overlaps(value: PurePosixPath, output: PurePosixPath) -> bool:
    """``value`` is ``output``, lies under it, or holds it (a folder the stage writes its outputs into)."""
    return value == output or output in value.parents or value in output.parents


def redirect_outputs(params: dict[str, Any], outputs: list[str] | tuple[str, ...], prefix: str) -> dict[str, Any]:
    """A copy of ``params`` where every string (nested ones too) that names one of ``outputs`` (equal to one,
    under one, or a folder holding one) is prefixed with ``prefix/``. A value with ``{name}`` fields, such as
    ``reports/pretrain/{model}-s{seed}``, is compared after formatting with ``params`` and keeps its fields."""
    outs = [p for p in (_normal(o) for o in outputs) if p is not None]

    def one(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(one(v) for v in value)
        if not isinstance(value, str):
            return value
        try:
            formatted = value.format(**params)
        except (KeyError, IndexError, ValueError, AttributeError):
            formatted = value
        path = _normal(formatted)
        if path is None or not any(_overlaps(path, o) for o in outs):
            return value
        return str(PurePosixPath(prefix) / _normal(value))

    return {k: one(v) for k, v in params.items()}


def find_repository(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``dvc.yaml``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no dvc.yaml in {start} or above: open the notebook inside the medvlp repository")


def run_by_pipeline() -> bool:
    """True inside a kernel started by ``medvlp notebook`` (:data:`PIPELINE_ENV` set)."""
    return bool(os.environ.get(PIPELINE_ENV))


#: The scratch folder of the notebook run by hand in this kernel (set by :func:`notebook_parameters`).
_hand_run_scratch: Path | None = None


def notebook_parameters(stem: str, item: str | None = None) -> dict[str, Any]:
    """A stage notebook's parameters, for its ``parameters`` cell: ``globals().update(notebook_parameters(stem))``.

    Run by the pipeline (``medvlp notebook``, :data:`PIPELINE_ENV` set): ``{}``, since Papermill injects the
    parameters in the next cell. Run by hand: the working directory becomes the repository root (JupyterLab
    starts kernels in ``notebooks/``), the values are those of the stage's ``params.yaml`` section as
    ``medvlp notebook`` passes them (``dvc.yaml`` names the section, the foreach item and the extra sections),
    with every output of the stage moved under ``scratch/<stem>/`` (:func:`redirect_outputs`); one line
    says so.

    Args:
        stem: the notebook's file name without ``.ipynb`` (``03_zero_shot``).
        item: for a foreach stage (``02_pretrain``), the stage's key (``fvlm-s1``); default: the first.

    Raises:
        LookupError: ``dvc.yaml`` has no stage running the notebook, or no such item.
        KeyError: ``params.yaml`` lacks the stage's section.
    """
    global _hand_run_scratch
    if run_by_pipeline():
        return {}
    from medvlp.params import load_params

    root = find_repository()
    moved = Path.cwd().resolve() != root
    if moved:
        os.chdir(root)
    stage = find_notebook_stage(root / "dvc.yaml", stem, item)
    params = stage_notebook_params(load_params(root / stage.params_file), stage.section, stage.item, stage.extra)
    scratch = PurePosixPath(SCRATCH) / stem
    params = redirect_outputs(params, stage.outputs, str(scratch))
    _hand_run_scratch = Path(scratch)
    what = (f"section `{stage.section}`" + (f" (item `{stage.item}`)" if stage.item else "")
            + "".join(f" + section `{e}`" for e in stage.extra))
    print(f"Run by hand, not by DVC: parameters from {stage.params_file}, {what}, as `dvc repro {stage.stage}` "
          f"passes them; every output goes to {scratch}/ (git-ignored), so nothing DVC tracks changes"
          + (f" (working directory: {root})." if moved else "."))
    return params


def output_path(path: str | Path) -> Path:
    """Where a notebook writes an output of its stage that is not a parameter (a fixed path such as
    ``reports/figures/pretrain/text_encoder.png``): ``path`` itself in the pipeline, the same path under
    ``scratch/<stem>/`` when run by hand.

    Raises:
        RuntimeError: run by hand before :func:`notebook_parameters`.
        ValueError: ``path`` is absolute or leaves the repository.
    """
    if run_by_pipeline():
        return Path(path)
    if _hand_run_scratch is None:
        raise RuntimeError("output_path: run the notebook's parameters cell (notebook_parameters) first")
    rel = _normal(str(path))
    if rel is None:
        raise ValueError(f"output_path: {str(path)!r} is not a path inside the repository")
    return _hand_run_scratch / rel


# ---------------------------------------------------------------------------------------------- pipeline runs


class _UndeclaredParameterFilter(logging.Filter):
    """Drops Papermill's "Passed unknown parameter" warnings: the parameters cell declares no names (it reads
    the section via :func:`notebook_parameters`), so every injected key would be reported. The check it made
    is tests/test_notebook_params.py: the names a notebook reads are exactly its section's keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


@contextlib.contextmanager
def _pipeline_environment() -> Iterator[None]:
    """:data:`PIPELINE_ENV` set (the kernel Papermill starts inherits ``os.environ``) and Papermill's
    undeclared-parameter warnings filtered, for the duration."""
    logger, quiet = logging.getLogger("papermill"), _UndeclaredParameterFilter()
    before = os.environ.get(PIPELINE_ENV)
    os.environ[PIPELINE_ENV] = "1"
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
        if before is None:
            os.environ.pop(PIPELINE_ENV, None)
        else:
            os.environ[PIPELINE_ENV] = before


def run_notebook(source: str | Path, output: str | Path, parameters: dict[str, Any],
                 *, cwd: str | Path | None = None, kernel_name: str = "python3",
                 progress: bool = True) -> Path:
    """Execute ``source`` with ``parameters`` injected after its ``parameters`` cell; write ``output``.

    The kernel runs with :data:`PIPELINE_ENV` set, so :func:`notebook_parameters` leaves the injected values
    and the pipeline's output paths alone."""
    import papermill as pm

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise FileNotFoundError(f"notebook {str(source)!r} not found")
    nb = nbformat.read(source, as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(f"{source}: no cell tagged 'parameters'; add the tag so stage params can be injected")
    output.parent.mkdir(parents=True, exist_ok=True)
    with _pipeline_environment():
        pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                            cwd=str(cwd) if cwd else None, progress_bar=progress, log_output=False)
    return output


# ---------------------------------------------------------------------------------------------- source notebooks


def notebook_has_outputs(path: str | Path) -> bool:
    """True if any code cell of the notebook stores outputs or an execution count."""
    nb = nbformat.read(Path(path), as_version=4)
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")) for c in nb.cells)


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; returns True if the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(nb, path)
    return changed


def strip_on_save(model: dict[str, Any], path: str, contents_manager: Any = None, **kwargs: Any) -> None:
    """A Jupyter ``ContentsManager.pre_save_hook`` (``make lab``): a notebook under ``notebooks/`` is saved
    without outputs, execution counts or per-cell execution metadata, and with the notebook metadata its
    file had, so saving a stage notebook after "Run All" changes no DVC dependency. The open notebook
    keeps its outputs until it is closed."""
    if model.get("type") != "notebook" or PurePosixPath(path.lstrip("/")).parent != PurePosixPath(NOTEBOOK_DIR):
        return
    content = model["content"]
    for cell in content.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
    root = getattr(contents_manager, "root_dir", None)
    on_disk = Path(root) / path.lstrip("/") if root else None
    if on_disk is not None and on_disk.is_file():
        with contextlib.suppress(Exception):
            content["metadata"] = nbformat.read(on_disk, as_version=4).metadata
