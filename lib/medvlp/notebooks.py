"""Run a stage notebook with Papermill, passing it its ``params.yaml`` section.

Every notebook under ``notebooks/`` has one cell tagged ``parameters``; DVC calls
``medvlp notebook <source> <executed> --section <stage>`` and the executed copy is a stage output
under ``reports/notebooks/``. Source notebooks are kept without outputs (``strip_outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat


def run_notebook(source: str | Path, output: str | Path, parameters: dict[str, Any],
                 *, cwd: str | Path | None = None, kernel_name: str = "python3",
                 progress: bool = True) -> Path:
    """Execute ``source`` with ``parameters`` injected after its ``parameters`` cell; write ``output``."""
    import papermill as pm

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise FileNotFoundError(f"notebook {str(source)!r} not found")
    nb = nbformat.read(source, as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(f"{source}: no cell tagged 'parameters'; add the tag so stage params can be injected")
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                        cwd=str(cwd) if cwd else None, progress_bar=progress, log_output=False)
    return output


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
