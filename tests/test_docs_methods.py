"""docs/methods.md names the code of every method element: each name must exist."""

import importlib
import re

from medvlp.params import load_params

NAME = re.compile(r"`(medvlp(?:\.\w+)+)`")


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_function_named_in_the_methods_table_exists(repo_root):
    text = (repo_root / "docs/methods.md").read_text("utf-8")
    names = sorted(set(NAME.findall(text)))
    assert len(names) >= 30
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/methods.md names code that does not exist: {missing}"


def test_switches_named_in_the_methods_table_are_params(repo_root):
    text = (repo_root / "docs/methods.md").read_text("utf-8")
    params = load_params(repo_root / "params.yaml")
    for section in ("zero_shot", "curate", "explain"):
        for key in re.findall(rf"`{section}\.(\w+)", text):
            assert key in params[section], f"docs/methods.md names {section}.{key}, which params.yaml lacks"
    common = params["pretrain"]["common"]
    for block in ("pc_align", "abnormal_calibration"):
        assert block in common
        for key in re.findall(rf"`{block}\.(\w+)", text):
            assert key in common[block], f"{block}.{key}"
