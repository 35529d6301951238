"""Typed errors for agentgym.

Every error says what was wrong (the offending value), why (the invariant) and how to fix it. They subclass
the closest builtin so that callers catching ``KeyError``/``ValueError``/``ImportError`` keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AgentGymError(Exception):
    """Base class of every error raised by agentgym."""


class UnknownNameError(AgentGymError, KeyError):
    """An env, policy or trainer name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(set(known))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if not close:
            lowered = {k.lower(): k for k in known}
            close = [lowered[k] for k in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if len(known) <= 30 else ", ".join(known[:30]) + ", ..."
        self.kind, self.name, self.suggestions = kind, name, close
        super().__init__(f"No {kind} named {name!r}.{hint} Registered {kind}s: {listing}.")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class RegistrationError(AgentGymError, ValueError):
    """A malformed or conflicting registration (bad id, duplicate id, bad entry point)."""


class MissingExtraError(AgentGymError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, what: str, module: str, extra: str) -> None:
        self.extra = extra
        super().__init__(
            f"{what} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with: pip install 'agentgym[{extra}]'"
        )


class LevelFormatError(AgentGymError, ValueError):
    """A level description (for example an XSB Sokoban file) that cannot be parsed into a valid level."""


class UnsolvableError(AgentGymError, ValueError):
    """A task that provably has no solution."""


class TaskError(AgentGymError, ValueError):
    """A task or split that does not exist for this env."""


class StateError(AgentGymError, ValueError):
    """A state snapshot that does not belong to this env (wrong type or shape)."""


class ContractError(AgentGymError, AssertionError):
    """An env breaks the agentgym environment contract (raised by ``agentgym.testing``)."""
