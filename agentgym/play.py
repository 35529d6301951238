"""``agentgym play ENV``: a person plays an env in the terminal, with arrow keys or typed actions.

Typed lines are parsed by the env's own ``parse_action`` (so a person sees exactly what an LLM's text maps to);
``u`` undoes a step through ``get_state``/``set_state``, ``r`` restarts the task, ``n`` starts a new one, ``o``
shows the oracle's move and ``q`` quits. Without a terminal (piped stdin) it reads one command per line, which is
also how the tests drive it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TextIO

HELP = "keys: arrows or typed actions (Enter) | u undo | r restart | n new task | o oracle hint | h help | q quit"
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}


def _tty_inputs(stream: TextIO) -> Iterator[str]:
    """Yield arrow words immediately and typed lines on Enter, reading the terminal in cbreak mode."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    buffer = ""
    try:
        tty.setcbreak(fd)
        while True:
            ch = stream.read(1)
            if ch == "\x1b":
                seq = stream.read(2)
                if seq[:1] == "[" and seq[1:] in _ARROWS:
                    yield _ARROWS[seq[1:]]
                continue
            if ch in ("", "\x04"):
                return
            if ch in ("\n", "\r"):
                sys.stdout.write("\n")
                yield buffer
                buffer = ""
            elif ch in ("\x7f", "\b"):
                buffer = buffer[:-1]
                sys.stdout.write("\b \b")
            else:
                buffer += ch
                sys.stdout.write(ch)
            sys.stdout.flush()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _line_inputs(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.strip()


def play(
    env: Any,
    *,
    seed: int = 0,
    task: Any = None,
    split: str = "train",
    stream: TextIO | None = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run an interactive session; returns counts of episodes, steps and successes."""
    stream = stream or sys.stdin
    out = out or sys.stdout
    inputs = _tty_inputs(stream) if stream.isatty() else _line_inputs(stream)
    base = env.unwrapped
    options = {"task": task} if task is not None else {"split": split}
    episode_seed = seed
    _, info = env.reset(seed=episode_seed, options=options)
    print(base.instructions(), HELP, "", base.text_observation(), sep="\n", file=out)
    history: list[Any] = []
    stats = {"episodes": 1, "steps": 0, "successes": 0}
    total, done = 0.0, False
    for command in inputs:
        cmd = command.strip().lower()
        if cmd in ("q", "quit", "exit"):
            break
        if cmd in ("h", "help", "?"):
            print(HELP, file=out)
            continue
        if cmd in ("u", "undo"):
            if history:
                base.set_state(history.pop())
                done = False
                print("(undone)", base.text_observation(), sep="\n", file=out)
            else:
                print("(nothing to undo)", file=out)
            continue
        if cmd in ("r", "restart", "n", "new"):
            if cmd.startswith("n"):
                episode_seed += 1
                options = {"split": split}
            else:
                options = {"task": base.task}
            env.reset(seed=episode_seed, options=options)
            history.clear()
            total, done = 0.0, False
            stats["episodes"] += 1
            print(f"(task {base.task})", base.text_observation(), sep="\n", file=out)
            continue
        if cmd in ("o", "oracle", "hint"):
            hint = base.oracle_action()
            names = getattr(base, "action_names", ())
            shown = names[hint] if isinstance(hint, int) and hint < len(names) else hint
            print(f"oracle suggests: {shown if hint is not None else 'nothing (no solution from here)'}", file=out)
            continue
        if done:
            print("the episode is over: r restart, n new task, q quit", file=out)
            continue
        history.append(base.get_state())
        _, reward, terminated, truncated, info = env.step(command)
        stats["steps"] += 1
        total += float(reward)
        if not info.get("action_valid", True):
            print(f"invalid: {info.get('action_error', 'unparseable')}", file=out)
        print(base.text_observation(), f"reward {reward:+.2f}  return {total:+.2f}", sep="\n", file=out)
        if terminated or truncated:
            done = True
            stats["successes"] += bool(info.get("success"))
            outcome = "solved!" if info.get("success") else ("out of time" if truncated else "game over")
            print(f"== {outcome} == (r restart, n new task, q quit)", file=out)
    return stats
