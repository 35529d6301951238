"""One registry for envs, policies and trainers: versioned ids, short aliases, string entry points, plugins.

Built-in and third-party packages register the same way: an entry point in one of the groups
``agentgym.environments``, ``agentgym.policies`` or ``agentgym.trainers`` names a zero-argument function that
calls ``agentgym.register`` (or ``register_policy`` / ``register_trainer``). Plugins are loaded lazily, on the
first lookup, so ``import agentgym`` stays cheap.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import gymnasium

from agentgym.errors import MissingExtraError, RegistrationError, UnknownNameError

ENV_GROUP = "agentgym.environments"
POLICY_GROUP = "agentgym.policies"
TRAINER_GROUP = "agentgym.trainers"

_ID_RE = re.compile(r"^(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.:-]+?)(?:-v(?P<version>\d+))?$")


@dataclass(frozen=True)
class EnvSpec:
    """How to build one registered env.

    Attributes:
        id: versioned id, ``namespace/Name-vN`` (for example ``agentgym/Sokoban-v0``).
        entry_point: ``"module.path:ClassName"`` (imported on ``make``) or a callable.
        kwargs: default constructor arguments; ``make(id, **kw)`` overrides them.
        aliases: short names (``"sokoban"``) that resolve to this id; matched case-insensitively.
        description: one line for ``agentgym envs``.
        tags: free-form tags (family, skills).
        views: observation views offered ("struct", "text", "rgb", "graph").
        extra: the pip extra whose packages this env needs, named in the error when they are missing.
        requires: modules that must import for this env to work (checked before the entry point).
        check: settings for ``agentgym.testing.check_env`` (oracle episodes, kwargs for the oracle test, ...).
        policy: the env's default trainable neural policy, ``"module:Class"`` of a ``NeuralPolicy`` (graph envs:
            their GNN); trainers use it when ``policy.network`` is ``auto``. None: the LLM policy.
        baselines: registered policy names that ``agentgym eval --baselines`` compares against on this env.
    """

    id: str
    entry_point: str | Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""
    tags: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    extra: str | None = None
    requires: tuple[str, ...] = ()
    check: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None
    baselines: tuple[str, ...] = ("random", "oracle")

    @property
    def name(self) -> str:
        """The id without namespace and version (``Sokoban``)."""
        return _parse_id(self.id)[1]

    @property
    def version(self) -> int:
        """The version number of the id."""
        return int(_parse_id(self.id)[2])

    def load(self) -> Callable[..., Any]:
        """Import and return the env constructor, raising ``MissingExtraError`` for a missing optional dependency."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingExtraError(f"The env {self.id!r}", module, self.extra or module) from exc
        return load_entry_point(self.entry_point)


def _parse_id(env_id: str) -> tuple[str | None, str, str | None]:
    match = _ID_RE.match(env_id)
    if match is None:
        raise RegistrationError(
            f"{env_id!r} is not a valid env id; use 'namespace/Name-vN', e.g. 'agentgym/Sokoban-v0'."
        )
    return match["ns"], match["name"], match["version"]


def load_entry_point(entry_point: str | Callable[..., Any]) -> Callable[..., Any]:
    """Resolve ``"module.path:attr"`` to the object it names."""
    if callable(entry_point):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    if not attr:
        raise RegistrationError(f"Entry point {entry_point!r} must look like 'module.path:Attribute'.")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise RegistrationError(f"Entry point {entry_point!r}: module {module_name!r} has no {attr!r}.") from exc


class _Registry:
    """Name -> spec tables for one kind of component, filled from plugins on first use."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind, self.group = kind, group
        self.specs: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self._plugins_loaded = False
        self._loading = False

    def load_plugins(self) -> None:
        if self._plugins_loaded or self._loading:
            return
        self._loading = True
        try:
            for ep in metadata.entry_points(group=self.group):
                try:
                    ep.load()()
                except Exception as exc:  # a broken plugin must not take the others down; say which one
                    warnings.warn(
                        f"agentgym: the {self.kind} plugin {ep.name!r} ({ep.value}) failed to register: {exc!r}",
                        stacklevel=2,
                    )
            self._plugins_loaded = True
        finally:
            self._loading = False

    def add(self, key: str, spec: Any, aliases: tuple[str, ...], *, override: bool) -> None:
        if key in self.specs and not override:
            raise RegistrationError(f"{self.kind} {key!r} is already registered; pass override=True to replace it.")
        self.specs[key] = spec
        for alias in aliases:
            owner = self.aliases.get(alias.lower())
            if owner is not None and owner != key and not override:
                raise RegistrationError(f"Alias {alias!r} already points to {owner!r}; choose another alias.")
            self.aliases[alias.lower()] = key

    def resolve(self, name: str) -> str:
        self.load_plugins()
        if name in self.specs:
            return name
        key = self.aliases.get(name.lower())
        if key is not None:
            return key
        raise UnknownNameError(self.kind, name, [*self.specs, *self.aliases])


_envs = _Registry("env", ENV_GROUP)
_policies = _Registry("policy", POLICY_GROUP)
_trainers = _Registry("trainer", TRAINER_GROUP)


def register(
    id: str,  # noqa: A002 - mirrors gymnasium.register
    entry_point: str | Callable[..., Any],
    *,
    kwargs: dict[str, Any] | None = None,
    aliases: tuple[str, ...] = (),
    description: str = "",
    tags: tuple[str, ...] = (),
    views: tuple[str, ...] = (),
    extra: str | None = None,
    requires: tuple[str, ...] = (),
    check: dict[str, Any] | None = None,
    policy: str | None = None,
    baselines: tuple[str, ...] = ("random", "oracle"),
    override: bool = False,
) -> EnvSpec:
    """Register an env under a versioned id (and with gymnasium as ``id``), returning its spec.

    The un-namespaced, un-versioned name (``Sokoban``) and ``Name-vN`` become aliases automatically; when several
    versions exist, the bare name resolves to the newest.
    """
    ns, name, version = _parse_id(id)
    if ns is None or version is None:
        raise RegistrationError(f"Env id {id!r} needs a namespace and a version, e.g. 'mypkg/{name}-v0'.")
    spec = EnvSpec(
        id=id,
        entry_point=entry_point,
        kwargs=dict(kwargs or {}),
        aliases=tuple(aliases),
        description=description,
        tags=tuple(tags),
        views=tuple(views),
        extra=extra,
        requires=tuple(requires),
        check=dict(check or {}),
        policy=policy,
        baselines=tuple(baselines),
    )
    auto = [f"{name}-v{version}"]
    newest = max(
        [int(version)] + [s.version for s in _envs.specs.values() if s.name == name and s.id.startswith(f"{ns}/")]
    )
    if int(version) >= newest:
        auto += [name, f"{ns}/{name}"]
    _envs.add(id, spec, (*auto, *aliases), override=override)
    gymnasium.register(id=id, entry_point=_gymnasium_creator(id), disable_env_checker=True)
    return spec


def _gymnasium_creator(env_id: str) -> Callable[..., Any]:
    def create(**kwargs: Any) -> Any:
        return make(env_id, **kwargs)

    create.__name__ = f"make_{env_id.replace('/', '_').replace('-', '_')}"
    return create


def spec(env_id: str) -> EnvSpec:
    """The spec of a registered env, by id or alias (raises ``UnknownNameError`` with suggestions)."""
    return _envs.specs[_envs.resolve(env_id)]


def make(env_id: str, **kwargs: Any) -> Any:
    """Build a registered env: ``make("sokoban", preset="tiny")``. Adds no wrappers."""
    env_spec = spec(env_id)
    creator = env_spec.load()
    merged = {**env_spec.kwargs, **kwargs}
    try:
        env = creator(**merged)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(
                f"{env_spec.id}: {exc}. `agentgym describe {env_spec.name.lower()}` lists its arguments."
            ) from exc
        raise
    env.spec_id = env_spec.id
    return env


def list_envs() -> list[EnvSpec]:
    """All registered env specs, sorted by id."""
    _envs.load_plugins()
    return [_envs.specs[k] for k in sorted(_envs.specs)]


# ---------------------------------------------------------------------- policies and trainers


@dataclass(frozen=True)
class ComponentSpec:
    """A registered policy or trainer: a name, a string entry point and a one-line description."""

    name: str
    entry_point: str | Callable[..., Any]
    description: str = ""
    extra: str | None = None
    requires: tuple[str, ...] = ()

    def load(self) -> Callable[..., Any]:
        """Import the factory, naming the extra to install when a required module is missing."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingExtraError(f"{self.name!r}", module, self.extra or module) from exc
        return load_entry_point(self.entry_point)


def _register_component(
    table: _Registry,
    name: str,
    entry_point: str | Callable[..., Any],
    *,
    description: str = "",
    extra: str | None = None,
    requires: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    override: bool = False,
) -> ComponentSpec:
    spec_ = ComponentSpec(name, entry_point, description, extra, tuple(requires))
    table.add(name, spec_, (name, *aliases), override=override)
    return spec_


def register_policy(name: str, entry_point: str | Callable[..., Any], **options: Any) -> ComponentSpec:
    """Register a policy factory ``factory(env, **kwargs) -> Policy`` under ``name``.

    Options: ``description``, ``extra`` and ``requires`` (the missing-extra error), ``aliases``, ``override``.
    """
    return _register_component(_policies, name, entry_point, **options)


def register_trainer(name: str, entry_point: str | Callable[..., Any], **options: Any) -> ComponentSpec:
    """Register a trainer class (with a ``Config`` dataclass and ``fit``) under ``name``; options as for policies."""
    return _register_component(_trainers, name, entry_point, **options)


def policy_spec(name: str) -> ComponentSpec:
    """The spec of a registered policy (did-you-mean on a miss)."""
    return _policies.specs[_policies.resolve(name)]


def trainer_spec(name: str) -> ComponentSpec:
    """The spec of a registered trainer (did-you-mean on a miss)."""
    return _trainers.specs[_trainers.resolve(name)]


def list_policies() -> list[ComponentSpec]:
    """All registered policies, sorted by name."""
    _policies.load_plugins()
    return [_policies.specs[k] for k in sorted(_policies.specs)]


def list_trainers() -> list[ComponentSpec]:
    """All registered trainers, sorted by name."""
    _trainers.load_plugins()
    return [_trainers.specs[k] for k in sorted(_trainers.specs)]
