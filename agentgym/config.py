"""Typed configs from dataclasses: defaults, a YAML file and ``--set key=value`` overrides, with field docs.

Each trainer has one frozen dataclass config; nested dataclasses (``policy:``, ``env:``) are addressed with dotted
keys (``--set policy.temperature=0.7``). Every value is checked against the field's annotation before the config
is built, so a wrong type fails at the command line with the field, the expected type and an example, never
deep inside a run. Field docs are the string literal written under each field (read from the source), which is
what ``agentgym train --env E --trainer T --help`` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from agentgym.errors import AgentGymError


class ConfigError(AgentGymError, ValueError):
    """A config value with the wrong type, an unknown key, or a broken invariant."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (inherited fields included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe_fields(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, doc) for every field, recursing into nested dataclasses.

    ``defaults`` is an instance whose values are the defaults to show (a nested section's default may differ from
    its class's own defaults, e.g. LOOP's policy section turns LoRA on).
    """
    rows = []
    docs, hints = field_docs(cls), _hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(hint):
            rows += describe_fields(hint, f"{prefix}{f.name}.", default if default != "(required)" else None)
            continue
        rows.append((prefix + f.name, _type_name(hint), repr(default), docs.get(f.name, "")))
    return rows


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``hint``, converting YAML forms (lists to tuples, ints to floats)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}={value!r} does not match {_type_name(hint)}.")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(map(repr, args))}.")
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list, e.g. {name}=[1, 2].")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{name}={value!r} must have {len(args)} items.")
            return tuple(coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping, e.g. {name}={{key: value}}.")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number, e.g. {name}=0.5.")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer, e.g. {name}=4.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be text; quote it, e.g. {name}='{value}'.")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} is a section; set its fields, e.g. {name}.<field>=...")
        return build(hint, value, prefix=f"{name}.")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{name}={value!r} must be a {hint.__name__}.")
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate ``cls`` from a nested dict, checking every key and value."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        import difflib

        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, sorted(names), n=1)
        hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown config key {prefix + key!r}.{hint} `--help` lists every field.")
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-5", "policy.temperature=0.7"]`` -> a nested dict (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE; write e.g. --set lr=1e-5")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads "1e-5" as text; users mean a number
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section.")
        node[parts[-1]] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``update`` wins)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(
    cls: type, *, file: str | Path | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None
) -> Any:
    """Defaults of ``cls``, then ``base`` (e.g. a resumed run's config), then a YAML file, then ``--set`` pairs."""
    values: dict[str, Any] = dict(base or {})
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"--config {str(path)!r} does not exist.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {str(path)!r} must hold a mapping of config keys.")
        values = merge(values, loaded)
    values = merge(values, parse_overrides(overrides))
    return build(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    """A YAML-safe nested dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
