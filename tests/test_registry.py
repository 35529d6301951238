from __future__ import annotations

import gymnasium
import pytest

import agentgym
from agentgym.errors import MissingExtraError, RegistrationError, UnknownNameError


def _register_toy(name: str, version: int = 0, **kw):
    return agentgym.register(
        id=f"testns/{name}-v{version}",
        entry_point="agentgym_corridor.env:CorridorEnv",
        kwargs={"length": 4 + version},
        **kw,
    )


def test_builtin_envs_are_registered_through_entry_points():
    ids = {s.id for s in agentgym.list_envs()}
    assert {"agentgym/Sokoban-v0", "agentgym/Game2048-v0"} <= ids
    assert agentgym.list() == agentgym.list_envs()  # the short name mirrors gymnasium's vocabulary


def test_aliases_resolve_case_insensitively():
    assert agentgym.spec("sokoban").id == "agentgym/Sokoban-v0"
    assert agentgym.spec("SOKOBAN").id == "agentgym/Sokoban-v0"
    assert agentgym.spec("Sokoban-v0").id == "agentgym/Sokoban-v0"
    assert agentgym.spec("agentgym/Sokoban").id == "agentgym/Sokoban-v0"


def test_unversioned_name_resolves_to_newest_version(corridor_cls):
    _register_toy("Versioned", 0, override=True)
    _register_toy("Versioned", 2, override=True)
    _register_toy("Versioned", 1, override=True)  # registered last but older: must not take the bare name
    assert agentgym.spec("Versioned").id == "testns/Versioned-v2"
    assert agentgym.spec("Versioned-v1").id == "testns/Versioned-v1"
    assert agentgym.make("testns/Versioned-v1").length == 5


def test_unknown_env_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        agentgym.make("sokobn")
    message = str(info.value)
    assert "'sokobn'" in message and "Did you mean" in message and "sokoban" in message.lower()
    assert isinstance(info.value, KeyError)


def test_duplicate_and_malformed_ids_are_rejected(corridor_cls):
    _register_toy("Dup", override=True)
    with pytest.raises(RegistrationError, match="already registered"):
        _register_toy("Dup")
    with pytest.raises(RegistrationError, match="namespace and a version"):
        agentgym.register(id="NoVersion", entry_point="x:y")
    with pytest.raises(RegistrationError, match="valid env id"):
        agentgym.register(id="bad id with spaces-v0", entry_point="x:y")


def test_missing_extra_names_the_install_command():
    agentgym.register(
        id="testns/NeedsExtra-v0",
        entry_point="nowhere:Env",
        requires=("a_module_that_does_not_exist_42",),
        extra="graph",
        override=True,
    )
    with pytest.raises(MissingExtraError) as info:
        agentgym.make("testns/NeedsExtra-v0")
    assert "pip install 'agentgym[graph]'" in str(info.value)
    assert "a_module_that_does_not_exist_42" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_every_env_is_reachable_through_gymnasium_make():
    for env_spec in [s for s in agentgym.list_envs() if not s.id.startswith("testns/")]:  # testns: broken on purpose
        env = gymnasium.make(env_spec.id)
        assert type(env.unwrapped) is type(agentgym.make(env_spec.id).unwrapped)
        env.close()


def test_make_passes_kwargs_and_names_unknown_ones(corridor_id):
    assert agentgym.make(corridor_id, length=7).length == 7
    with pytest.raises(TypeError, match="agentgym describe"):
        agentgym.make(corridor_id, no_such_argument=1)


def test_policies_register_through_entry_points():
    names = {p.name for p in agentgym.list_policies()}
    assert {"random", "oracle"} <= names
    with pytest.raises(UnknownNameError, match="Did you mean 'oracle'"):
        agentgym.policy_spec("oracel")
