"""Stage functions take their parameters from params.yaml alone.

A stage function (``run_curation``, ``pretrain_text_encoder``, ...) declares every parameter of its
params.yaml section as a keyword-only argument without a default, so that params.yaml is the one place that
gives it a value. :func:`stage_function` makes a call that leaves one out fail with
:class:`MissingParamsError` naming the missing keys and the params.yaml section they belong in (Python's own
error names the argument but not where its value comes from). :func:`require_keys` does the same for a
mapping (``TrainConfig.from_params``).

The usual call passes the whole section::

    from medvlp.params import load_params, stage_params
    run_curation(**stage_params(load_params("params.yaml"), "curate"))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["HOW_TO_PASS", "MissingParamsError", "missing_params_message", "require_keys", "required_keywords",
           "stage_function"]

F = TypeVar("F", bound=Callable[..., Any])


class MissingParamsError(TypeError, ValueError):
    """Parameters of a params.yaml section were left out. A TypeError (as Python's own error for a missing
    argument) and a ValueError (as every other bad parameter of ``TrainConfig.from_params``)."""


#: How to pass a whole section (the end of every :class:`MissingParamsError` message).
HOW_TO_PASS = "pass the whole section: medvlp.params.stage_params(medvlp.params.load_params(), '<section>')"


def missing_params_message(owner: str, missing: Mapping[str, Iterable[str]], how: str = HOW_TO_PASS) -> str:
    """``<owner>: missing ['a', 'b'] of params.yaml section 'x' (...)`` for ``missing = {section: keys}``."""
    parts = "; ".join(f"missing {sorted(keys)} of params.yaml section {section!r}" for section, keys in missing.items())
    return f"{owner}: {parts} (params.yaml is the one place that sets a stage parameter; {how})"


def require_keys(given: Mapping[str, Any], required: Iterable[str], section: str, owner: str,
                 how: str = HOW_TO_PASS) -> None:
    """Raise :class:`MissingParamsError` unless every key of ``required`` is in ``given``."""
    missing = [k for k in required if k not in given]
    if missing:
        raise MissingParamsError(missing_params_message(owner, {section: missing}, how))


def required_keywords(fn: Callable[..., Any]) -> list[str]:
    """The keyword-only parameters of ``fn`` that have no default, in order."""
    return [name for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty]


def stage_function(section: str, **other_sections: str) -> Callable[[F], F]:
    """Decorate a stage function whose keyword-only arguments without default are keys of params.yaml's
    ``section`` (or, for the names given in ``other_sections``, the section named there, e.g.
    ``seeds="seeds"``): a call without some of them raises :class:`MissingParamsError` naming them and their
    section. Arguments with a default (``progress``) are not parameters of params.yaml.
    """

    def decorate(fn: F) -> F:
        required = required_keywords(fn)
        unknown = sorted(set(other_sections) - set(required))
        if unknown:
            raise TypeError(f"{fn.__qualname__}: {unknown} are not keyword-only arguments without default")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            missing = [k for k in required if k not in kwargs]
            if missing and not args:  # (arguments by position: Python's own error says they are keyword-only)
                by_section: dict[str, list[str]] = {}
                for key in missing:
                    by_section.setdefault(other_sections.get(key, section), []).append(key)
                how = HOW_TO_PASS.replace("'<section>'", repr(section))
                raise MissingParamsError(missing_params_message(fn.__qualname__, by_section, how))
            return fn(*args, **kwargs)

        wrapper.params_section = section  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
