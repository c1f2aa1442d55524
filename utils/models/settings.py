"""A backend's settings, defined once: the dataclasses whose fields are the ``**settings`` of its fit and predict.

A backend class names them per stage (``fit_settings`` and ``infer_settings``: tuples of dataclasses, each field
with a default, a type annotation and ``metadata["help"]``); from them come the check every stage parameter runs
before anything starts (``check``: an unknown name, with the closest valid one, or a value of the wrong type, in one
line), ``run_all.sh --help-backend NAME`` (``describe``) and the notebooks' description of their
``settings``. Only names and types are checked here; each dataclass still checks its values when it is built.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

STAGES = ("fit", "infer")


class SettingsError(ValueError):
    """A backend setting that cannot work (unknown name or wrong type); the message names the valid choices."""


@dataclass(frozen=True)
class Setting:
    """One setting of one stage of a backend."""

    name: str
    type: str  # as written in the dataclass: "int", "float | None", "tuple[str, ...]"
    default: Any
    help: str
    owner: str  # the dataclass that defines it
    hint: Any = None  # the evaluated annotation, for the type check


def _type_text(hint: Any) -> str:
    if hint is type(None):
        return "None"
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in get_args(hint))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_text(a) for a in get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def settings_of(*config_types: type) -> dict[str, Setting]:
    """Every field of ``config_types`` as a ``Setting``, by name (a name defined twice keeps its first definition:
    one value reaches both, as ``**settings`` split by field name do)."""
    out: dict[str, Setting] = {}
    for cls in config_types:
        hints = get_type_hints(cls)
        for f in fields(cls):
            if f.name in out:
                continue
            default = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
            out[f.name] = Setting(f.name, _type_text(hints[f.name]), default, f.metadata.get("help", ""),
                                  cls.__name__, hints[f.name])
    return out


def fits(hint: Any, value: Any) -> bool:
    """Whether a JSON-like ``value`` fits the annotation ``hint`` (an int fits a float, a list a tuple; a bool is
    no number)."""
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(a, value) for a in get_args(hint))
    if origin is typing.Literal:
        return value in get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, set, frozenset) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in get_args(hint) if a is not Ellipsis]
        return len(set(map(repr, args))) > 1 or not args or all(fits(args[0], v) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def check(settings: dict[str, Any], defined: dict[str, Setting], where: str) -> None:
    """``SettingsError`` for the first unknown name (with the closest valid one) or wrong-typed value in
    ``settings``; ``where`` names them in the message (``"fit setting of backend 'ocr'"``)."""
    if not isinstance(settings, dict):
        raise SettingsError(f"{where}s must be a JSON object, got {settings!r}")
    for name in sorted(settings):
        if name not in defined:
            close = difflib.get_close_matches(name, list(defined), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(f"unknown {where} {name!r}{hint} Valid names: {', '.join(sorted(defined))}")
        setting, value = defined[name], settings[name]
        if setting.hint is not None and not fits(setting.hint, value):
            raise SettingsError(f"{where} {name!r} must be {setting.type}, got {value!r} ({type(value).__name__}): "
                                f"{setting.help}")


def describe(defined: dict[str, Setting], title: str) -> str:
    """``title`` then one block per setting: ``name: type = default`` and its help, indented."""
    import json
    import textwrap

    lines = [title]
    for s in defined.values():
        default = json.dumps(list(s.default) if isinstance(s.default, tuple) else s.default, default=str)
        lines.append(f"  {s.name}: {s.type} = {default}")
        lines += textwrap.wrap(s.help, 112, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def split(settings: dict[str, Any], *config_types: type) -> list[dict[str, Any]]:
    """``settings`` split among dataclasses by field name (a name two define goes to both); an unknown name raises
    ``TypeError`` with the closest valid one and all of them."""
    defined = settings_of(*config_types)
    try:
        check({k: v for k, v in settings.items() if k not in defined}, defined, "setting")
    except SettingsError as exc:
        raise TypeError(str(exc)) from None
    names = [{f.name for f in fields(t)} for t in config_types]
    return [{k: v for k, v in settings.items() if k in n} for n in names]
