"""Each stage notebook reads exactly its params.yaml section (the check Papermill's "Passed unknown parameter"
warning made, which `medvlp notebook` silences: the parameters cell declares no names, it reads the section).

For every notebook under notebooks/ and the section `medvlp notebook` passes it (dvc.yaml names the section, the
foreach items and the extra sections; medvlp.notebooks.find_notebook_stage):

- every name its code reads that it does not define (assignments, imports, for-targets, function and class
  definitions and their arguments, builtins) is a key of the section;
- every key of the section is used: read by name, or consumed whole through `select_params(fn, globals())` (the
  parameters of fn) or `TrainConfig.from_namespace(globals())` (TrainConfig's fields), and the parameters of fn
  without a default are keys of the section;
- the parameters cell only reads the section: `globals().update(notebook_parameters("<its own stem>"))`, with no
  value of its own (a third set of values besides params.yaml and the notebook's defaults).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

import nbformat
import pytest

from medvlp.notebooks import find_notebook_stage, stage_notebook_params
from medvlp.params import load_params, load_yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: Names the IPython kernel provides besides Python's builtins.
KERNEL_NAMES = {"display", "get_ipython", "In", "Out", "exit", "quit"}


def _parse(source: str) -> ast.Module:
    """A cell's code, IPython magics and shell escapes (``%...``, ``!...``) blanked."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def _is_globals(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"


def _select_params_of(node: ast.AST) -> str | None:
    """``fn`` when ``node`` is ``select_params(fn, globals())``."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "select_params"
            and len(node.args) == 2 and isinstance(node.args[0], ast.Name) and _is_globals(node.args[1])):
        return node.args[0].id
    return None


class NotebookNames(ast.NodeVisitor):
    """The names one notebook reads, defines, and hands over whole through ``globals()``."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.defined: set[str] = set()
        self.imported: dict[str, str] = {}               # local name -> "module.attr" / "module"
        self.select_params: dict[int, tuple[str, int, set[str]]] = {}   # fn of select_params(fn, globals()), and
        #   the positional arguments and named keywords of the call it is spread into (fn(a, **select_params(...)))
        self.from_namespace: list[str] = []              # cls of cls.from_namespace(globals())
        self.globals_reads: set[str] = set()             # globals().get("x") / globals()["x"]
        self.updates: list[ast.Call] = []                # globals().update(<call>)
        self.other_globals: list[str] = []               # any other use of globals(): not analysable
        self._handled: set[int] = set()

    # definitions
    def visit_Name(self, node: ast.Name) -> None:
        (self.reads if isinstance(node.ctx, ast.Load) else self.defined).add(node.id)

    def visit_arg(self, node: ast.arg) -> None:
        self.defined.add(node.arg)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.defined.add(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.defined.add(node.name)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            self.defined.add(local)
            self.imported[local] = alias.name if alias.asname else local

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.defined.add(alias.asname or alias.name)
            self.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    # what globals() hands over
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        args = node.args
        for kw in node.keywords:  # fn(a, b, **select_params(fn, globals())): a and b are fn's first parameters
            if kw.arg is None and _select_params_of(kw.value):
                self.select_params[id(kw.value)] = (_select_params_of(kw.value), len(args),
                                                    {k.arg for k in node.keywords if k.arg})
        if _select_params_of(node):
            self.select_params.setdefault(id(node), (_select_params_of(node), 0, set()))
            self._handled.add(id(args[1]))
        elif (isinstance(func, ast.Attribute) and func.attr == "from_namespace" and len(args) == 1
              and _is_globals(args[0]) and isinstance(func.value, ast.Name)):
            self.from_namespace.append(func.value.id)
            self._handled.add(id(args[0]))
        elif isinstance(func, ast.Attribute) and _is_globals(func.value):
            self._handled.add(id(func.value))
            if func.attr == "get" and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                self.globals_reads.add(args[0].value)
            elif func.attr == "update" and len(args) == 1 and isinstance(args[0], ast.Call):
                self.updates.append(args[0])
            else:
                self.other_globals.append(ast.unparse(node))
        elif _is_globals(node) and id(node) not in self._handled:
            self.other_globals.append(ast.unparse(node))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_globals(node.value) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            self._handled.add(id(node.value))
            (self.globals_reads if isinstance(node.ctx, ast.Load) else self.defined).add(node.slice.value)
        self.generic_visit(node)


def _resolve(names: NotebookNames, local: str) -> Any:
    """The object a notebook's imported name stands for."""
    target = names.imported.get(local)
    if target is None:
        raise LookupError(f"`{local}` is not imported by the notebook")
    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr) if module else importlib.import_module(attr)
    except (ImportError, AttributeError):
        return importlib.import_module(target)


def analyse(nb: nbformat.NotebookNode) -> tuple[NotebookNames, NotebookNames]:
    """(the names of the whole notebook, those of its parameters cell)."""
    whole, params_cell = NotebookNames(), NotebookNames()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = _parse(cell.source)
        whole.visit(tree)
        if "parameters" in cell.metadata.get("tags", []):
            params_cell.visit(tree)
    return whole, params_cell


def notebook_problems(nb: nbformat.NotebookNode, stem: str, section: dict[str, Any], where: str) -> list[str]:
    """What breaks the rule of this module's docstring, for notebook ``stem`` given its ``section`` (the
    parameters ``medvlp notebook`` passes it: section keys and extra sections); empty when nothing does."""
    names, params_cell = analyse(nb)
    keys = set(section)
    problems = []

    consumed: set[str] = set()
    for local, n_positional, named in names.select_params.values():
        fn = _resolve(names, local)
        parameters = inspect.signature(fn).parameters
        consumed |= set(parameters)
        required = {n for i, (n, p) in enumerate(parameters.items()) if p.default is inspect.Parameter.empty
                    and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and i >= n_positional} - named
        problems += [f"{where}: select_params({local}, globals()) needs `{k}`, which is not a key of the section"
                     for k in sorted(required - keys)]
    for local in names.from_namespace:
        cls = _resolve(names, local)
        consumed |= {f.name for f in dataclasses.fields(cls)}
    problems += [f"{where}: cannot tell which names `{call}` reads" for call in names.other_globals]

    allowed = names.defined | set(dir(builtins)) | KERNEL_NAMES
    for name in sorted((names.reads - allowed) | (names.globals_reads - names.defined)):
        if name not in keys:
            problems.append(f"{where}: reads `{name}`, which is neither defined in the notebook nor a key of the "
                            f"section")
    used = names.reads | names.globals_reads | consumed
    problems += [f"{where}: never uses the section's key `{k}`" for k in sorted(keys - used)]

    calls = [c for c in params_cell.updates if isinstance(c.func, ast.Name) and c.func.id == "notebook_parameters"]
    stems = [c.args[0].value for c in calls if c.args and isinstance(c.args[0], ast.Constant)]
    if stems != [stem]:
        problems.append(f"{where}: the parameters cell must run globals().update(notebook_parameters({stem!r})), "
                        f"found {stems}")
    own = params_cell.defined - set(params_cell.imported)
    if own:
        problems.append(f"{where}: the parameters cell sets {sorted(own)} itself; values come from params.yaml")
    return problems


def _sections(stem: str) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, parameters) for every stage (every foreach item) running notebooks/<stem>.ipynb."""
    dvc = load_yaml((REPO / "dvc.yaml").read_text("utf-8"))
    everything = load_params(REPO / "params.yaml")
    first = find_notebook_stage(dvc, stem)
    stages = [find_notebook_stage(dvc, stem, item) for item in first.items] or [first]
    return [(s.stage, stage_notebook_params(everything, s.section, s.item, s.extra)) for s in stages]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_exactly_its_section(path):
    nb = nbformat.read(path, as_version=4)
    problems = []
    for stage, section in _sections(path.stem):
        problems += notebook_problems(nb, path.stem, section, f"{path.name} (dvc stage {stage})")
    assert problems == [], "\n".join(dict.fromkeys(problems))


def _notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    return nb


PARAMS_CELL = 'from medvlp.notebooks import notebook_parameters\nglobals().update(notebook_parameters("09_demo"))'


def test_rule_passes_a_notebook_that_reads_its_section():
    nb = _notebook(PARAMS_CELL, "import math\nfor k in range(n_boot):\n    total = math.sqrt(k) + alpha\n"
                                "print(globals().get('beta'))")
    assert notebook_problems(nb, "09_demo", {"n_boot": 10, "alpha": 0.5, "beta": 1}, "demo") == []


def test_rule_fails_a_planted_bad_notebook():
    nb = _notebook(PARAMS_CELL, "for k in range(n_boot):\n    print(k, alpha, n_bootstrap)")
    problems = notebook_problems(nb, "09_demo", {"n_boot": 10, "alpha": 0.5, "unused_key": 1}, "demo")
    assert len(problems) == 2, problems
    assert "reads `n_bootstrap`" in problems[0]
    assert "never uses the section's key `unused_key`" in problems[1]


def test_rule_counts_select_params_and_from_namespace_and_their_required_keys():
    from medvlp.params import select_params  # noqa: F401  (the planted notebook imports it)

    nb = _notebook(PARAMS_CELL, "from medvlp.params import select_params, stage_params\n"
                                "from medvlp.train import TrainConfig\n"
                                "stage_params(**select_params(stage_params, globals()))\n"
                                "TrainConfig.from_namespace(globals())")
    # stage_params(params, section, item=None): consumes all three, needs params and section
    problems = notebook_problems(nb, "09_demo", {"section": "x", "item": None, "lr": 1, "stages": []}, "demo")
    assert problems == ["demo: select_params(stage_params, globals()) needs `params`, which is not a key of the "
                        "section", "demo: never uses the section's key `lr`"], problems


def test_rule_fails_a_parameters_cell_with_its_own_values_or_another_stem():
    nb = _notebook(PARAMS_CELL.replace("09_demo", "03_zero_shot") + "\nn_boot = 5", "print(n_boot)")
    problems = notebook_problems(nb, "09_demo", {"n_boot": 10}, "demo")
    assert any("notebook_parameters('09_demo')" in p for p in problems), problems
    assert any("sets ['n_boot'] itself" in p for p in problems), problems
    nb = _notebook(PARAMS_CELL, "fn(**globals())")
    assert any("cannot tell which names" in p for p in notebook_problems(nb, "09_demo", {}, "demo"))
