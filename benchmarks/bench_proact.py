"""ProAct's three stages on held-out tasks, over several seeds: zero-shot, after GLAD, after GLAD + MC-GRPO.

One ``agentgym train --trainer proact`` run per (suite, seed) does all three: the trainer evaluates dev and test
before training (zero-shot), right after the GLAD epochs (label ``glad``) and at the end. This script runs them,
each in its own process, then reads every run's ``metrics.jsonl`` and evaluation samples and prints per suite:

* Sokoban: held-out test success at the three stages, per seed and pooled;
* 2048: mean score (the env's merge score, read from the episodes' last ``info``) and the distribution of the max
  tile at the three stages, next to a uniform-random policy and the expectimax oracle on the same test tasks.

Usage (CPU defaults are small; pass ``--set`` to scale them, e.g. ``--set glad_tasks=256 --set glad_epochs=4``)::

    .venv/bin/python benchmarks/bench_proact.py --suites sokoban-tiny 2048-3x3 --seeds 0 1 2 --out runs/bench-proact
    .venv/bin/python benchmarks/bench_proact.py --report-only --suites sokoban-tiny --out runs/bench-proact

``--neighbors`` adds the Sokoban env's ``Around you`` line (``text_neighbors=True``: what each move runs into);
``--moves`` / ``--no-moves`` set 2048's line of the moves that change the board (``text_moves``; ProAct's default
for 2048 has it).
``--zero-shot-once`` evaluates the untrained model in the first seed only (Sokoban is deterministic, so greedy
decoding gives every seed the same zero-shot episodes). Sokoban reports also replay every held-out move against
the solver (share on a shortest solution, deadlocks, moves repeated on an unchanged board).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: The trainers' default Sokoban view and shaping (``trainers.common.default_env``), the preset aside.
SOKOBAN = {"distance_reward": 0.5, "approach_reward": 0.2, "text_positions": True}
#: suite -> (env id, constructor kwargs).
SUITES: dict[str, tuple[str, dict[str, object]]] = {
    "sokoban-tiny": ("sokoban", {**SOKOBAN, "preset": "tiny"}),
    "sokoban-easy": ("sokoban", {**SOKOBAN, "preset": "easy"}),
    "2048-3x3": ("game2048", {"size": 3}),
    "2048-4x4": ("game2048", {"size": 4}),
}
STAGES = ("start", "glad", "end")


def run_suite(suite: str, seed: int, out: Path, overrides: list[str], env_extra: dict[str, dict[str, object]]) -> None:
    """Train one (suite, seed) unless its run already finished (``report.md`` exists); ``env_extra``: extra env
    kwargs by env name."""
    env, kwargs = SUITES[suite]
    kwargs = {**kwargs, **env_extra.get(env, {})}
    run = out / suite / f"seed{seed}"
    if (run / "report.md").exists():
        return
    cmd = [str(Path(sys.executable).parent / "agentgym"), "train", "--env", env, "--trainer", "proact"]
    cmd += ["--env-kwargs", *[f"{k}={v}" for k, v in kwargs.items()], "--set", f"seed={seed}", "--out", str(run)]
    for item in overrides:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {suite} seed {seed}: {(time.perf_counter() - started) / 60:.1f} min wall", flush=True)


def episodes(run: Path, stage: str, split: str = "test") -> list[dict]:
    """The episodes of ``split`` the trainer evaluated at ``stage`` (``samples/eval-SPLIT-STAGE.jsonl``).

    A run with ``stages=glad`` has no RL stage: its final evaluation is the after-GLAD one.
    """
    config = run / "config.yaml"
    if config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("stages") == "glad":
        if stage == "end":
            return []
        stage = "end" if stage == "glad" else stage
    path = run / "samples" / f"eval-{split}-{stage}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_change(runs: list[tuple[int, Path]], before: str, after: str) -> str:
    """Test tasks solved at one stage and not the other, pairing each run's episodes by task (McNemar's counts).

    Each run plays the same held-out tasks at every stage, so a stage's gain is the tasks it newly solves less the
    ones it loses; the exact two-sided sign test on those discordant pairs says whether the change beats chance.
    """
    gained = lost = both = neither = 0
    for _, run in runs:
        first = {(e["task"], e.get("seed")): bool(e.get("success")) for e in episodes(run, before)}
        for e in episodes(run, after):
            key = (e["task"], e.get("seed"))
            if key not in first:
                continue
            was, now = first[key], bool(e.get("success"))
            gained += now and not was
            lost += was and not now
            both += was and now
            neither += not was and not now
    n = gained + lost
    if gained + lost + both + neither == 0:
        return f"paired {before} -> {after}: no test task played at both stages"
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n if n else 1.0
    return (f"paired {before} -> {after} (same test tasks): solved at both {both}, neither {neither}, newly solved "
            f"{gained}, lost {lost}; two-sided sign test on the {n} changed tasks p = {min(1.0, 2 * tail):.3f}")


def last_info(episode: dict) -> dict:
    """The info of an episode's last turn (2048's ``score`` and ``max_tile``)."""
    turns = episode.get("turns") or []
    return turns[-1].get("info", {}) if turns else {}


def baseline_2048(kwargs: dict[str, object], policy: str, tasks: int, seed: int, max_turns: int | None) -> list[dict]:
    """``agentgym eval``'s code for a registered policy (random, oracle) on the test split, as episode infos.

    ``max_turns`` is the runs' turn budget, so the baselines' games are cut where the trained policy's were.
    """
    from agentgym.evaluation import build_policy, evaluate_policy
    from agentgym.registry import make
    from agentgym.rollout import RolloutConfig

    env = make("game2048", **kwargs)
    agent = build_policy(policy, env)
    env.close()
    _, trajectories = evaluate_policy(
        "game2048",
        agent,
        policy_name=policy,
        episodes=tasks,
        split="test",
        seed=seed + 10_000,
        env_kwargs=kwargs,
        rollout=RolloutConfig(num_envs=8, max_turns=max_turns),
    )
    return [t.turns[-1].info if t.turns else {} for t in trajectories]


def describe_2048(infos: list[dict]) -> str:
    """Mean score and max-tile counts of some finished 2048 episodes."""
    if not infos:
        return "-"
    scores = [float(i.get("score", 0)) for i in infos]
    tiles = Counter(int(i.get("max_tile", 0)) for i in infos)
    spread = ", ".join(f"{tile}: {count}" for tile, count in sorted(tiles.items()))
    return f"score {sum(scores) / len(scores):,.0f} (max tile {spread}; n={len(infos)})"


def move_quality(records: list[dict]) -> str:
    """Sokoban moves replayed against the solver: the share on a shortest solution (from solvable, unsolved
    positions), what a uniformly random move would score at the same positions, and the deadlocked episodes."""
    from bench_learning_sokoban import _rates, episode_moves  # the learning benchmark's replay (same folder)

    if not records:
        return "no episodes"
    cache: dict = {}
    replayed = [episode_moves(r, cache) for r in records]
    share, deadlocked, n, uniform = _rates(replayed)
    failed = [(r, dead) for r, (_, dead) in zip(records, replayed) if not r.get("success")]
    # A state-only prompt and greedy decoding answer an unchanged board the same way: one move that changes
    # nothing (into a wall or a blocked box) is then repeated to the turn limit.
    looping = sum(not dead and _ends_in_noops(r) for r, dead in failed)
    return (f"moves on a shortest solution {share:.1%} of {n} (a uniformly random move: {uniform:.1%}), "
            f"episodes with a deadlock {deadlocked:.0%}; of {len(failed)} failures {sum(d for _, d in failed)} "
            f"deadlocked, {looping} repeated a move that changes nothing to the turn limit")


def chain_accuracy(records: list[dict], kwargs: dict[str, object]) -> str:
    """How the model's chains compare with the GLAD chain of the same position, replayed in the env.

    Per move (Up/Down/Left/Right) the model's clause is right when it equals the true one word for word, counted by
    the true verdict's kind; also the offsets line and the next-push clause, and whether the answer is a move the
    model's own chain called shortest (or solving): chains that are right but not followed, and choices the chain
    never justified.
    """
    from agentgym.glad import SearchBudget
    from agentgym.registry import make
    from environments.sokoban.glad import NAMES, glad_chain

    env = make("sokoban", **kwargs)
    budget = SearchBudget(seconds=30.0)
    right: Counter = Counter()
    seen: Counter = Counter()
    positions = aimed = consistent = turns = unfollowed = 0
    by_plan: Counter = Counter()  # positions by whether the next-push clause was right
    on_path: Counter = Counter()  # ... where the answer was a move on a shortest solution
    for record in records:
        env.reset(seed=record["seed"], options={"task": record["task"]})
        for turn in record.get("turns") or []:
            found = glad_chain(env, budget)
            reply = str(turn["action"])
            env.step(reply)
            if found is None:  # deadlocked or solved: no true chain to compare
                continue
            truth = _clauses(found[0])
            said = _clauses(reply.partition("<think>")[2].partition("</think>")[0])
            turns += 1
            positions += said.get("where") == truth["where"]
            aimed += said.get("next", "").partition(",")[0] == truth["next"].partition(",")[0]  # box and direction
            for name in NAMES:
                kind = _verdict_kind(truth[name])
                seen[kind] += 1
                right[kind] += said.get(name) == truth[name]
            answer = env.unwrapped.parse_action(reply)
            verdict = said.get(NAMES[answer], "") if answer is not None else ""
            consistent += verdict.endswith(("shortest", "solves it")) and not verdict.endswith("also shortest")
            best = re.search(r"Best: (\w+)\.", reply.partition("</think>")[0])
            unfollowed += best is not None and answer is not None and best.group(1) != NAMES[answer]
            true_verdict = truth.get(NAMES[answer], "") if answer is not None else ""
            plan_right = said.get("next") == truth["next"]
            by_plan[plan_right] += 1
            on_path[plan_right] += true_verdict.endswith(("shortest", "solves it"))
    env.close()
    if not turns:
        return "no solvable positions"
    kinds = ", ".join(f"{k} {right[k]}/{seen[k]}" for k in sorted(seen, key=lambda k: -seen[k]))
    return (f"chains vs the solver's at {turns} positions: offsets line right {positions / turns:.0%}; "
            f"next-push clause right {by_plan[True] / turns:.0%} (its box and direction {aimed / turns:.0%}); "
            f"clauses right by true verdict: {kinds}; answer is a move its own chain calls shortest "
            f"{consistent / turns:.0%}; answer not the chain's own `Best:` move {unfollowed}/{turns}; "
            f"answer on a shortest solution where the next-push clause is right "
            f"{on_path[True]}/{by_plan[True]}, where it is wrong {on_path[False]}/{by_plan[False]}")


def moves_2048(records: list[dict], size: int, max_turns: int | None) -> str:
    """2048 moves replayed against expectimax, and how the games ended.

    Per turn the board is read back from the observation text and the expectimax oracle values every move: the
    share of answers that change the board and that are its argmax (next to a uniformly random legal move's chance
    of being the argmax at the same positions). For the chains: how often the model's "no change" claims are
    right, both ways. Endings: game over, the env's stuck limit (too many moves in a row that change nothing), or
    the turn budget.
    """
    from agentgym.registry import make
    from environments.game2048.board import ACTION_NAMES, tables
    from environments.game2048.oracle import expectimax

    env = make("game2048", size=size)
    search, t = expectimax(size), tables(size)
    turns = effective = best = 0
    uniform = 0.0
    said_none = true_none = right_none = 0  # claims, true no-change moves, claims of a true one
    endings: Counter = Counter()
    for record in records:
        steps = record.get("turns") or []
        if record.get("terminated"):
            endings["game over"] += 1
        elif max_turns is not None and len(steps) >= max_turns:
            endings["turn budget"] += 1
        else:
            endings["stuck limit"] += 1
        for turn in steps:
            rows = [line.strip("[]").split() for line in str(turn["observation"]).splitlines() if line.startswith("[")]
            board = t.from_exponents([[0 if c == "." else int(c).bit_length() - 1 for c in row] for row in rows])
            values = np.asarray(search.move_values(board), dtype=np.float64)
            legal = np.isfinite(values)
            if not legal.any():
                continue
            reply = str(turn["action"])
            answer = env.unwrapped.parse_action(reply)
            turns += 1
            top = values[legal].max()
            uniform += float(np.sum(values[legal] == top)) / int(legal.sum())
            if answer is not None and legal[answer]:
                effective += 1
                best += values[answer] == top
            chain = reply.partition("<think>")[2].partition("</think>")[0]
            for a, name in enumerate(ACTION_NAMES):
                says = f"{name}: no change" in chain
                said_none += says
                true_none += not legal[a]
                right_none += says and not legal[a]
    env.close()
    if not turns:
        return "no playable positions"
    ends = ", ".join(f"{k} {v}" for k, v in endings.most_common())
    return (f"at {turns} positions the answer changed the board {effective / turns:.0%} and was expectimax's best "
            f"{best / turns:.0%} (a uniformly random legal move: {uniform / turns:.0%}); 'no change' claims right "
            f"{right_none}/{said_none}, no-change moves named {right_none}/{true_none}; games ended by: {ends}")


def _clauses(chain: str) -> dict[str, str]:
    """A Sokoban chain split into its offsets line (``where``), next-push clause (``next``) and each move's clause."""
    out: dict[str, str] = {}
    head, _, rest = chain.partition(" Up:")
    where, _, plan = head.partition(" Next: ")
    out["where"], out["next"] = where.strip(), plan.strip()
    rest = "Up:" + rest if rest else ""
    for part in rest.split(". "):
        name, colon, verdict = part.partition(":")
        if colon and name in ("Up", "Down", "Left", "Right"):
            out[name] = verdict.strip().rstrip(".")
    return out


def _verdict_kind(verdict: str) -> str:
    for kind in ("solves it", "also shortest", "shortest", "more moves", "more move", "more pushes", "wall",
                 "box blocked", "deadlock"):
        if kind in verdict:
            return {"more move": "more moves", "also shortest": "shortest"}.get(kind, kind)
    return verdict


def _ends_in_noops(record: dict, last: int = 3) -> bool:
    """Whether an episode's last ``last`` moves all left the board as it was."""
    turns = record.get("turns") or []
    return len(turns) >= last and not any(t.get("info", {}).get("action_effective", True) for t in turns[-last:])


def report(suites: list[str], seeds: list[int], out: Path) -> None:
    """Print the stage tables of every suite from the finished runs."""
    for suite in suites:
        env, kwargs = SUITES[suite]
        print(f"\n## {suite}")
        runs = [(seed, out / suite / f"seed{seed}") for seed in seeds if (out / suite / f"seed{seed}").is_dir()]
        if not runs:
            print("no runs")
            continue
        pooled: dict[str, list[dict]] = {stage: [] for stage in STAGES}
        for seed, run in runs:
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            minutes = (rows[-1]["time"] - rows[0]["time"]) / 60 if len(rows) > 1 else 0.0
            cells = []
            for stage in STAGES:
                eps = episodes(run, stage)
                pooled[stage] += eps
                if env == "sokoban":
                    wins = sum(bool(e.get("success")) for e in eps)
                    cells.append(f"{stage} {wins}/{len(eps)}" if eps else f"{stage} -")
                else:
                    cells.append(f"{stage}: {describe_2048([last_info(e) for e in eps])}")
            print(f"seed {seed}: " + " | ".join(cells) + f" | {minutes:.1f} min from the first logged step to the last")
        for stage in STAGES:
            eps = pooled[stage]
            if env == "sokoban":
                wins = sum(bool(e.get("success")) for e in eps)
                rate = f"{wins / len(eps):.1%}" if eps else "-"
                dev = [e for _, run in runs for e in episodes(run, stage, "dev")]
                print(f"pooled {stage}: test {wins}/{len(eps)} = {rate}, dev {sum(bool(e.get('success')) for e in dev)}"
                      f"/{len(dev)}; {move_quality([*dev, *eps])}")
                if eps:
                    # The runs' own env settings (a run may have added text_neighbors, say).
                    config = yaml.safe_load((runs[0][1] / "config.yaml").read_text())
                    print(f"  {stage}: {chain_accuracy([*dev, *eps], config['env']['kwargs'])}")
            else:
                print(f"pooled {stage}: {describe_2048([last_info(e) for e in eps])}")
                if eps:
                    config = yaml.safe_load((runs[0][1] / "config.yaml").read_text())
                    dev = [e for _, run in runs for e in episodes(run, stage, "dev")]
                    print(f"  {stage} (dev and test): "
                          f"{moves_2048([*dev, *eps], int(kwargs['size']), config['env']['max_turns'])}")
        if env == "sokoban":
            print(paired_change(runs, "glad", "end"))
        missing = [seed for seed, run in runs if not episodes(run, "start")]
        if missing:
            why = ("on a deterministic env, greedy decoding of the same model on the same tasks gives every seed the "
                   "same zero-shot result" if env == "sokoban" else "the other seeds' zero-shot games stand for them")
            print(f"seeds {missing} skipped the zero-shot evaluation (eval_start=false): {why}")
        if env == "game2048":
            # Every run's test tasks and tile spawns (the evaluation seed is the run's seed + 10000), pooled.
            for policy in ("random", "oracle"):
                infos = []
                for _, run in runs:
                    n = max(len(episodes(run, stage)) for stage in STAGES)
                    config = yaml.safe_load((run / "config.yaml").read_text())
                    max_turns = config["env"]["max_turns"]
                    infos += baseline_2048(kwargs, policy, n, config["seed"], max_turns)
                print(f"{policy} (same test tasks, max_turns {max_turns}): {describe_2048(infos)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=["sokoban-tiny", "2048-3x3"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-proact")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set KEY=VALUE")
    parser.add_argument("--report-only", action="store_true", help="only read existing runs")
    parser.add_argument("--zero-shot-once", action="store_true",
                        help="evaluate the untrained model only in the first seed; for a deterministic env (Sokoban) "
                        "greedy decoding gives every seed the same zero-shot result (2048's tile spawns differ)")
    parser.add_argument("--neighbors", action="store_true",
                        help="Sokoban suites add the env's 'Around you' line (text_neighbors=True)")
    parser.add_argument("--moves", action=argparse.BooleanOptionalAction, default=None,
                        help="2048 suites with (--moves) or without (--no-moves) the line of moves that change the "
                        "board (text_moves); neither: ProAct's default for 2048, which has it")
    args = parser.parse_args()
    out = Path(args.out)
    extra = {"sokoban": {"text_neighbors": True} if args.neighbors else {},
             "game2048": {} if args.moves is None else {"text_moves": args.moves}}
    if not args.report_only:
        for suite in args.suites:
            for i, seed in enumerate(args.seeds):
                once = ["eval_start=false"] if args.zero_shot_once and i > 0 else []
                run_suite(suite, seed, out, args.overrides + once, extra)
    report(args.suites, args.seeds, out)


if __name__ == "__main__":
    main()
