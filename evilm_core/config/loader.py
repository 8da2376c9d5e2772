"""YAML recipes mapped onto typed dataclasses.

A recipe is plain YAML whose top-level `kind` names the dataclass it maps onto (the registry
is evilm_core/recipes.py). Mapping is strict: an unknown key is an error that names the key, its
section and the closest valid keys; a value of the wrong type names the expected type. Command
line overrides (`--set model.fusion.layers=2`) are applied to the raw mapping before it is
typed, so they get exactly the same checks. Fields marked `path_field()` are resolved against
the working directory at load time, so the resolved config saved in a run directory still
points at the same files when read from elsewhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from evilm_core.errors import EvilmError, RecipeError
from evilm_core.fs import atomic_write_text, read_text

T = TypeVar("T")


def path_field(default: Any = None, **kwargs) -> Any:
    """A dataclass field holding a file system path (resolved against the cwd on load)."""
    return dataclasses.field(default=default, metadata={"path": True}, **kwargs)


# ---------------------------------------------------------------------------- YAML bounds

MAX_VALUES = 100_000  # values (scalars, lists, mappings) a recipe may hold once its YAML aliases are expanded
MAX_DEPTH = 64  # nesting of lists and mappings


def check_expansion(raw: Any, where: str) -> None:
    """Refuse a YAML document whose aliases expand to more than MAX_VALUES values, that nests
    deeper than MAX_DEPTH or that contains itself. PyYAML shares an aliased node instead of
    copying it, so loading a billion-laughs document costs nothing; walking it (typing, printing)
    would. Counted here once per distinct node, bottom-up, without recursion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, int, bool]] = [(raw, 0, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in sizes and not done):
            continue
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) if isinstance(c, (dict, list)) else 1 for c in children)
            if sizes[id(node)] > MAX_VALUES:
                raise RecipeError(f"{where}: more than {MAX_VALUES} values once its YAML aliases (*name) are "
                                  "expanded; a recipe is a small file, write the values out")
            continue
        if id(node) in open_nodes:
            raise RecipeError(f"{where}: a YAML alias (*name) refers to the value that contains it")
        if depth >= MAX_DEPTH:
            raise RecipeError(f"{where}: values nested more than {MAX_DEPTH} deep")
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)


# ---------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value); the value is read as YAML (typed)."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' is not of the form section.key=value")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override '{text}' names no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError(f"override '{short_repr(text)}': value is not valid YAML ({err})") from None
    check_expansion(value, f"override '{short_repr(text)}'")
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each dotted key in the raw mapping; unknown keys are caught later by typing."""
    for text in overrides:
        parts, value = parse_override(text)
        set_key(raw, parts, value, f"override '{text}'")
    return raw


def set_key(raw: dict, parts: list[str], value: Any, what: str = "recipe key") -> dict:
    """raw[parts[0]][parts[1]]... = value, making the sections on the way."""
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{what}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return raw


# ---------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def short_repr(value: Any, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters, built without walking all of a huge value."""
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother = 4, limit, limit
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = 8
    text = brief.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fail(where: str, tp: Any, value: Any) -> RecipeError:
    return RecipeError(f"recipe key '{where[:200]}': expected {_type_name(tp)}, got {short_repr(value)} "
                       f"({type(value).__name__})", key=where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(where, tp, value)
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        for arg in args:  # first member that accepts the value wins
            try:
                return _coerce(value, arg, where)
            except RecipeError:
                continue
        raise _fail(where, tp, value)
    if origin is Literal:
        if value in args:
            return value
        raise _fail(where, tp, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, tp, value)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, tp, value)
        return {k: _coerce(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise _fail(where, tp, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; accept it as the number it obviously is
            return float(value)
        except ValueError:
            raise _fail(where, tp, value) from None
    if tp in (int, str, bool, float):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise _fail(where, tp, value)
    raise RecipeError(f"recipe key '{where}': unsupported annotation {tp!r}")


# names other frameworks use for evilm's keys: suggested when the spelling is too far for difflib
ALIASES = {"learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "warmup": "warmup_steps",
           "warmup_iters": "warmup_steps", "num_epochs": "epochs", "max_epochs": "epochs", "steps": "max_steps",
           "bs": "batch_size", "batch": "batch_size", "workers": "num_workers", "clip_grad": "grad_clip",
           "max_grad_norm": "grad_clip", "frames": "num_frames", "img_size": "image_size", "resolution": "image_size",
           "amp": "precision", "mixed_precision": "precision", "dtype": "precision", "out_dir": "dir",
           "output_dir": "dir", "lr_scheduler": "schedule", "scheduler": "schedule"}


def closest_keys(key: str, valid: list[str]) -> list[str]:
    """The valid keys a misspelt `key` most likely meant: a known alias first, then difflib's."""
    alias = ALIASES.get(key.lower())
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return ([alias] if alias in valid else []) + [c for c in close if c != alias]


def unknown_key_error(key: str, section: str, valid: list[str]) -> RecipeError:
    close = closest_keys(key, valid)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    where = f"section '{section}'" if section else "the top level"
    return RecipeError(f"unknown recipe key '{key}' in {where}.{hint} Valid keys: {', '.join(sorted(valid))}.",
                       key=f"{section}.{key}" if section else key)


def blame_override(err: RecipeError, overrides: list[str]) -> str | None:
    """The `--set` text an error is about, if one set that key (or a key inside it): the last one
    wins, as when the overrides were applied. None when the error is about the file itself."""
    if err.key is None:
        return None
    for text in reversed(overrides):
        key = text.partition("=")[0].strip()
        if key == err.key or key.startswith(err.key + ".") or err.key.startswith(key + "."):
            return text
    return None


def _build(cls: type[T], raw: dict, section: str) -> T:
    expand = getattr(cls, "expand_raw", None)  # a section with named presets (the model's `size:`)
    if expand is not None:
        raw = expand(raw, section)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise unknown_key_error(str(key), section, list(fields))
    kwargs = {}
    for name, value in raw.items():
        where = f"{section}.{name}" if section else name
        kwargs[name] = _coerce(value, hints[name], where)
    for name in fields.keys() - kwargs.keys():  # absent sections: build defaults the same way
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, f"{section}.{name}" if section else name)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:  # __post_init__ checks and missing required keys
        raise RecipeError(f"recipe section '{section or 'top level'}': {err}", key=_checked_key(section, str(err))) from None
    for name, f in fields.items():  # defaults too, so the saved config is cwd-independent
        value = getattr(obj, name)
        if f.metadata.get("path") and isinstance(value, str) and value and not value.startswith("hf-hub:"):
            setattr(obj, name, str(Path(os.path.expanduser(value)).absolute()))
    return obj


def section_error(err: RecipeError) -> str:
    """A RecipeError's message without its "recipe section 'x': " lead (for a file that is not a recipe)."""
    return re.sub(r"^recipe section '[^']*': ", "", str(err))


def _checked_key(section: str, message: str) -> str | None:
    """The dotted key a __post_init__ message starts with ("optim.lr must be > 0, ..."), if any."""
    first = message.split(" ", 1)[0]
    return first if section and first.startswith(section + ".") else None


def from_dict(cls: type[T], raw: dict, section: str = "") -> T:
    """Map a plain mapping onto dataclass `cls`, strictly (see module docstring)."""
    return _build(cls, raw, section)


# ---------------------------------------------------------------------------- files


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        text = read_text(path, "recipe")
    except EvilmError as err:
        raise RecipeError(str(err)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    check_expansion(raw, str(path))
    if raw is None:
        raise RecipeError(f"{path}: the recipe is empty; start from one of recipes/ (it needs at least `kind:`)")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    return raw


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-able structures (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write the resolved config atomically (temp name, then rename)."""
    atomic_write_text(path, dump_yaml(obj), fsync=False)
