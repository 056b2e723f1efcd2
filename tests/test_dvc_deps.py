"""dvc.yaml's deps cannot drift from the code: a stage reruns when a module it runs changes.

For every stage, the modules it runs are the ``medvlp`` modules its notebook's code cells import, and
transitively everything those modules import (found with ``ast`` in lib/medvlp, imports inside functions
included), with the package ``__init__`` modules that Python executes on the way, the submodules a package
exports lazily (PEP 562 ``__getattr__`` over a table of names), and the package data a reached module reads
with ``importlib.resources`` (lexicons, model configs, recipes; reading them imports their package). The
stage's deps must cover each of those files, by naming it or a folder above it. The notebook is the first
``*.ipynb`` of the stage's cmd, whatever launches it (``medvlp notebook``, ``bin/medvlp notebook``,
``python -m medvlp notebook``); a cmd that runs ``python -m medvlp.<module>`` instead is followed from that
module.

The launcher's own modules (``medvlp.cli``) are not part of a stage: they inject params.yaml's values,
which DVC tracks as the stage's ``params``. (The notebooks import ``medvlp.notebooks`` themselves.)
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib"
ROOT_PACKAGE = "medvlp"
#: Files in the package that are neither code nor data read at run time.
NOT_DATA = (".py", ".pyc", ".md")


# ------------------------------------------------------------------------------------------ modules

def module_path(name: str) -> Path | None:
    """The source of module ``name`` (``a.b`` -> lib/a/b.py or lib/a/b/__init__.py), None when absent."""
    base = LIB.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def is_package(name: str) -> bool:
    path = module_path(name)
    return path is not None and path.name == "__init__.py"


@cache
def parse_module(name: str) -> ast.Module:
    path = module_path(name)
    assert path is not None, name
    return ast.parse(path.read_text("utf-8"), filename=str(path))


def _statements(body: list[ast.stmt]):
    """The statements of ``body`` and of the ``if`` / ``try`` / ``with`` blocks in it (not of defs)."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from _statements(getattr(node, block, []) or [])


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (imports, defs, classes, assignments)."""
    names: set[str] = set()
    for node in _statements(tree.body):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


@cache
def lazy_exports(package: str) -> dict[str, str]:
    """``{name: submodule}`` of a package whose ``__getattr__`` imports names lazily (PEP 562) from a
    module-level table ``{"<submodule>": ("<name>", ...)}`` (``medvlp.lazy_exports``); empty for any other
    module."""
    if not is_package(package):
        return {}
    tree = parse_module(package)
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for target in n.targets
                for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)}
    if "__getattr__" not in defined:
        return {}
    out: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)):
            continue
        try:
            table = ast.literal_eval(node.value)
        except ValueError:
            continue
        if all(isinstance(k, str) and module_path(f"{package}.{k}") for k in table) and all(
                isinstance(v, tuple | list) and all(isinstance(n, str) for n in v) for v in table.values()):
            out.update({n: f"{package}.{sub}" for sub, names in table.items() for n in names})
    return out


@dataclass
class Imports:
    """What a piece of code imports: ``modules`` of ``ROOT_PACKAGE`` found; ``unresolved`` names imported
    from one of its modules that are neither a submodule, a lazy export nor bound by that module."""

    modules: set[str] = field(default_factory=set)
    unresolved: set[str] = field(default_factory=set)


def _resolve_relative(module: str | None, level: int, current: str, current_is_package: bool) -> str:
    package = current if current_is_package else current.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def imports_of(tree: ast.Module, current: str = "", current_is_package: bool = False) -> Imports:
    """Every ``ROOT_PACKAGE`` module ``tree`` imports, anywhere in it (inside functions too)."""
    found = Imports()

    def add_whole(name: str) -> None:
        found.modules.add(name)
        found.modules.update(lazy_exports(name).values())  # `import pkg`: any lazy attribute may be used

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT_PACKAGE:
                    add_whole(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(node.module, node.level, current, current_is_package) if node.level
                    else node.module or "")
            if base.split(".")[0] != ROOT_PACKAGE:
                continue
            found.modules.add(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name == "*":
                    found.modules.update(lazy_exports(base).values())
                elif module_path(sub):
                    found.modules.add(sub)
                elif alias.name in lazy_exports(base):
                    found.modules.add(lazy_exports(base)[alias.name])
                elif module_path(base) is None or alias.name not in top_level_names(parse_module(base)):
                    found.unresolved.add(f"from {base} import {alias.name}")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).split(".")[0] == ROOT_PACKAGE):
            name = (node.func.attr if isinstance(node.func, ast.Attribute)
                    else node.func.id if isinstance(node.func, ast.Name) else None)
            if name == "import_module":
                add_whole(node.args[0].value)
            elif name == "files":  # importlib.resources.files("<package>") imports the package
                found.modules.add(node.args[0].value)
    return found


def with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a module executes its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: Imports) -> Imports:
    """Every module reached from ``roots`` (and their packages), with the unresolved imports on the way."""
    seen: set[str] = set()
    unresolved = set(roots.unresolved)
    todo = [p for m in roots.modules for p in with_parents(m)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if module_path(name) is None:
            unresolved.add(f"import {name} (no such module in {LIB.relative_to(REPO)})")
            continue
        seen.add(name)
        found = imports_of(parse_module(name), name, is_package(name))
        unresolved |= found.unresolved
        todo += [p for m in found.modules for p in with_parents(m) if p not in seen]
    return Imports(seen, unresolved)


# ------------------------------------------------------------------------------------- package data

def package_folder(package: str) -> Path:
    return LIB.joinpath(*package.split("."))


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in NOT_DATA
                  and "__pycache__" not in p.parts)


def data_read_by(module: str) -> set[Path]:
    """Package data ``module`` reads: ``importlib.resources.files("<package>")``, narrowed to
    ``.joinpath("<literal>")`` when it follows; the package's every data file when the name is computed."""
    tree = parse_module(module)
    narrowed: dict[int, str] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "joinpath"
                and node.args and isinstance(node.args[0], ast.Constant)):
            narrowed[id(node.func.value)] = node.args[0].value
    out: set[Path] = set()
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if (name == "files" and node.args and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] == ROOT_PACKAGE):
            folder = package_folder(node.args[0].value)
            target = folder / narrowed[id(node)] if id(node) in narrowed else folder
            out.update(data_files(target) if target.is_dir() else [target])
    return out


# --------------------------------------------------------------------------------------------- stages

def code_cells(notebook: Path) -> str:
    """The notebook's code cells as one Python source (IPython magics and shell lines left out)."""
    cells = json.loads(notebook.read_text("utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _words(cmd: str | list[str]) -> list[str]:
    return [w for part in ([cmd] if isinstance(cmd, str) else cmd) for w in shlex.split(part)]


def stage_roots(cmd: str | list[str], repo: Path = REPO) -> tuple[list[str], Imports]:
    """What a stage's cmd runs: (the files it names that are code: the notebook, ``[]`` for a module run;
    the imports of that code)."""
    words = _words(cmd)
    notebooks = [w for w in words if w.endswith(".ipynb")]
    if notebooks:
        source = notebooks[0]
        tree = ast.parse(code_cells(repo / source), filename=source)
        return [source], imports_of(tree)
    modules = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m" and words[i + 1].startswith(ROOT_PACKAGE)]
    return [], Imports(set(modules))


_VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def _substitute(value, variables: dict):
    if isinstance(value, str):
        def lookup(match: re.Match) -> str:
            path = match.group(1).split(".")
            if path[0] not in variables:
                return match.group(0)  # a params.yaml variable: not a path of ours
            got = variables[path[0]]
            for part in path[1:]:
                got = got[part]
            return str(got)
        return _VAR.sub(lookup, value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, variables): _substitute(v, variables) for k, v in value.items()}
    return value


def expand_stages(dvc: dict) -> dict[str, dict]:
    """``{stage name: spec}``, a ``foreach`` stage expanded into ``<name>@<key>`` stages."""
    out = {}
    for name, spec in dvc.get("stages", {}).items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        items = spec["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
        for key, item in pairs:
            out[f"{name}@{key}"] = _substitute(copy.deepcopy(spec["do"]), {"key": key, "item": item})
    return out


def dep_paths(spec: dict) -> list[str]:
    deps = []
    for dep in spec.get("deps", []):
        deps += list(dep) if isinstance(dep, dict) else [dep]
    return [d.rstrip("/") for d in deps]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in deps)


@dataclass
class StageNeeds:
    """The repository files a stage runs or reads (repo-relative), and the imports that could not be followed."""

    files: set[str]
    unresolved: set[str]


def stage_needs(spec: dict, repo: Path = REPO) -> StageNeeds:
    notebooks, roots = stage_roots(spec["cmd"], repo)
    found = closure(roots)
    files = {module_path(m) for m in found.modules}
    files |= {p for m in found.modules for p in data_read_by(m)}
    rel = {p.relative_to(REPO).as_posix() for p in files} | set(notebooks)
    return StageNeeds(rel, found.unresolved)


def uncovered(dvc: dict) -> dict[str, list[str]]:
    """``{stage: [files it needs that its deps do not cover]}`` for the stages missing some."""
    out = {}
    for name, spec in expand_stages(dvc).items():
        deps = dep_paths(spec)
        missing = sorted(f for f in stage_needs(spec).files if not covered(f, deps))
        if missing:
            out[name] = missing
    return out


def unused_code_deps(dvc: dict) -> dict[str, list[str]]:
    """``{stage: [lib/ deps under which it runs nothing]}``: such a dep reruns the stage for nothing."""
    out = {}
    for name, spec in expand_stages(dvc).items():
        files = stage_needs(spec).files
        unused = sorted(d for d in dep_paths(spec)
                        if d.startswith("lib/") and not any(covered(f, [d]) for f in files))
        if unused:
            out[name] = unused
    return out


@cache
def repo_dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))


# ---------------------------------------------------------------------------------------------- tests

def test_every_stage_runs_something_we_can_follow():
    stages = expand_stages(repo_dvc())
    assert "curate" in stages and "pretrain@clip-s0" in stages
    for name, spec in stages.items():
        notebooks, roots = stage_roots(spec["cmd"])
        assert roots.modules, f"{name}: cannot tell what its cmd {spec['cmd']!r} runs"
        needs = stage_needs(spec)
        assert not needs.unresolved, f"{name}: imports this test cannot follow: {sorted(needs.unresolved)}"
        assert any(f.endswith("__init__.py") for f in needs.files)


def test_dvc_deps_cover_the_code_each_stage_runs():
    missing = uncovered(repo_dvc())
    assert not missing, "dvc.yaml: stages miss deps on code they run (add the module, or its folder):\n" + "\n".join(
        f"  {stage}: {files}" for stage, files in missing.items())


def test_dvc_deps_name_no_code_the_stage_does_not_run():
    unused = unused_code_deps(repo_dvc())
    assert not unused, "dvc.yaml: deps on library code the stage never imports (a change there would rerun it " \
        "for nothing):\n" + "\n".join(f"  {stage}: {files}" for stage, files in unused.items())

    dvc = copy.deepcopy(repo_dvc())  # and the rule can fail
    dvc["stages"]["zero_shot"]["deps"].append("lib/medvlp/curate/dedup.py")
    assert unused_code_deps(dvc) == {"zero_shot": ["lib/medvlp/curate/dedup.py"]}


def test_every_package_data_file_has_a_known_reader():
    """A data file added to the package is read by a module this test can see reading it (else teach
    ``data_read_by`` how it is read, so that the stages reading it depend on it)."""
    modules = {".".join(p.relative_to(LIB).with_suffix("").parts).removesuffix(".__init__")
               for p in (LIB / ROOT_PACKAGE).rglob("*.py")}
    read = {p for m in modules for p in data_read_by(m)}
    assert set(data_files(LIB / ROOT_PACKAGE)) - read == set()
    readers = {m for m in modules if data_read_by(m)}
    assert {"medvlp.lexicon", "medvlp.models.configs", "medvlp.params"} <= readers


def test_a_missing_dep_fails():
    dvc = copy.deepcopy(repo_dvc())
    curate = dvc["stages"]["curate"]
    curate["deps"] = [d for d in curate["deps"] if d != "lib/medvlp/lexicon.py"]
    assert uncovered(dvc) == {"curate": ["lib/medvlp/lexicon.py"]}
    curate["deps"] = [d for d in curate["deps"] if d != "lib/medvlp/resources"]
    assert "lib/medvlp/resources/concepts.json" in uncovered(dvc)["curate"]  # the lexicon's data

    dvc = copy.deepcopy(repo_dvc())  # a foreach stage: every item misses it
    do = dvc["stages"]["pretrain"]["do"]
    do["deps"] = [d for d in do["deps"] if d != "lib/medvlp/losses"]
    missing = uncovered(dvc)
    assert sorted(missing) == sorted(f"pretrain@{k}" for k in dvc["stages"]["pretrain"]["foreach"])
    assert "lib/medvlp/losses/sigmoid.py" in missing["pretrain@clip-s0"]


def test_a_folder_dep_covers_its_files():
    assert covered("lib/medvlp/train/loop.py", ["lib/medvlp/train"])
    assert not covered("lib/medvlp/train_extra.py", ["lib/medvlp/train"])
    assert not covered("lib/medvlp/train/loop.py", ["lib/medvlp/train/data.py"])


@pytest.mark.parametrize("cmd", [
    "medvlp notebook notebooks/01_curate.ipynb reports/notebooks/01_curate.ipynb --section curate",
    "bin/medvlp notebook notebooks/01_curate.ipynb reports/notebooks/01_curate.ipynb --section curate",
    "OMP_NUM_THREADS=1 python -m medvlp notebook 'notebooks/01_curate.ipynb' out.ipynb --section curate",
    ["mkdir -p reports", "medvlp notebook notebooks/01_curate.ipynb out.ipynb --section curate"],
])
def test_the_notebook_is_found_whatever_launches_it(cmd):
    notebooks, roots = stage_roots(cmd)
    assert notebooks == ["notebooks/01_curate.ipynb"] and "medvlp.curate" in roots.modules


def test_module_stage_is_followed_from_its_module():
    notebooks, roots = stage_roots("python -m medvlp.train --params params.yaml --model clip")
    assert notebooks == [] and roots.modules == {"medvlp.train"}


def test_closure_follows_packages_lazy_exports_and_function_level_imports():
    found = closure(imports_of(ast.parse("from medvlp.curate import run_curation")))
    assert {"medvlp", "medvlp.curate", "medvlp.curate.pipeline", "medvlp.lexicon",
            "medvlp.stage_args"} <= found.modules
    assert "medvlp.curate.shards" in found.modules  # imported by the pipeline
    assert "medvlp.train" not in found.modules
    # `from medvlp.train.config import ...` executes medvlp/train/__init__.py (lazy: not the loop); config
    # imports medvlp.models.configs inside a function, which executes medvlp/models/__init__.py (every model)
    found = closure(imports_of(ast.parse("from medvlp.train.config import TrainConfig")))
    assert {"medvlp.train", "medvlp.models.configs", "medvlp.models", "medvlp.models.fvlm"} <= found.modules
    assert "medvlp.train.loop" not in found.modules
    assert "medvlp.train.loop" in closure(imports_of(ast.parse("from medvlp.train import train"))).modules
    assert "medvlp.train.loop" in closure(imports_of(ast.parse("import medvlp.train"))).modules
    assert closure(imports_of(ast.parse("from medvlp.curate import no_such_name"))).unresolved
    assert closure(imports_of(ast.parse("import medvlp.no_such_module"))).unresolved


def test_foreach_items_are_substituted():
    stages = expand_stages(repo_dvc())
    radclip = dep_paths(stages["pretrain@radclip-s1"])
    assert "reports/pretrain/clip-s0/best.pt" in radclip and not any("${" in d for d in radclip)
    assert "--item radclip-s1" in stages["pretrain@radclip-s1"]["cmd"]
