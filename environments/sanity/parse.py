"""Reading a named choice (a colour, a word) out of model text, shared by the sanity envs."""

from __future__ import annotations

import re
from collections.abc import Sequence

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def name_pattern(names: Sequence[str]) -> re.Pattern[str]:
    """A case-insensitive pattern matching any of ``names`` as a whole word (so ``reddish`` is not ``red``)."""
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)


def first_name(text: str, pattern: re.Pattern[str], names: Sequence[str]) -> int | None:
    """The index in ``names`` (lowercase) of the first name in ``text``, or None when it names none.

    When ``text`` holds ``<answer>...</answer>``, only the last answer's content is read: a model that reasons
    about several options before answering is judged by its answer, not by the first option it mentioned.
    """
    answers = _ANSWER_RE.findall(text)
    if answers:
        text = answers[-1]
    match = pattern.search(text)
    if match is None:
        return None
    return names.index(match.group(1).lower())
