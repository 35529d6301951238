"""A genetic-algorithm planner for the vertiport env: evolves per-block dispatch rules and per-aircraft bases.

Genome, over ``K`` time blocks of ``block_ticks`` ticks:

- ``bases`` ``[M, K]`` ints, per aircraft and block: ``-1`` means "no preference", ``v >= 0`` means "base the
  aircraft at vertiport ``v`` during this block";
- ``rules`` ``[K, 3]`` floats, per block: the greedy rule's ``min_profit``, ``expiry_weight`` and
  ``energy_price`` (see ``oracle.greedy_choices``).

Decoding: an idle aircraft takes the flight the block's greedy rule picks; when that rule says "stay" and the
aircraft's base gene names another vertiport it may fly to, it repositions there (carrying whoever waits for that
trip); otherwise it stays and charges. The genome with no bases and zero rule genes is exactly the greedy
dispatcher, and it is always in the first population.

Fitness: the mean profit over ``futures`` sampled futures of a rollout from the current state to the end of the
planning horizon. Each future is a copy of the current fleet state (the arrays the env's ``get_state`` snapshots,
copied into a private ``FleetSim`` with ``copy_sim``) driven by a fresh RNG from the planner's own stream, so the
planner never sees the real future's draws (neither the env's RNG nor its pending take-off delays); all genomes of a
generation are scored on the same futures (common random numbers), and each generation draws new futures.

Search: tournament selection, uniform crossover, per-gene mutation (to ``-1`` or a random vertiport), elitism.
Plans are recomputed every ``replan_ticks`` ticks from the state reached (receding horizon), warm-started from the
previous population shifted in time. Every rollout simulates the fleet (``FleetSim``) without building
observations, so the cost is dominated by ``population x generations x futures x horizon`` simulated ticks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from environments.vertiport.fleet import FleetSim
from environments.vertiport.oracle import greedy_choices
from environments.vertiport.scenario import Scenario

_SIM_FIELDS = ("status", "loc", "dest", "timer", "soc", "load", "closure", "waiting", "delay_draw", "totals")


@dataclass(frozen=True)
class GAConfig:
    """Budget and operators of the GA planner.

    Attributes:
        population: genomes per generation.
        generations: generations per plan.
        futures: sampled futures each genome is scored on per generation.
        block_ticks: ticks per genome time block.
        horizon_ticks: ticks each plan looks ahead (None: to the end of the day).
        replan_ticks: ticks between plans (None: plan once per day).
        tournament: genomes per selection tournament.
        crossover: probability that a child mixes two parents (uniform crossover) instead of copying one.
        mutation: probability per gene of a mutation.
        elite: best genomes copied unchanged into the next generation.
        init_preference: share of genes set to a random vertiport in the first population.
    """

    population: int = 16
    generations: int = 10
    futures: int = 2
    block_ticks: int = 6
    horizon_ticks: int | None = 36
    replan_ticks: int | None = 12
    tournament: int = 3
    crossover: float = 0.9
    mutation: float = 0.03
    elite: int = 2
    init_preference: float = 0.05

    def __post_init__(self) -> None:
        for name in ("population", "generations", "futures", "block_ticks", "tournament"):
            if getattr(self, name) < 1:
                raise ValueError(f"GAConfig.{name}={getattr(self, name)} must be >= 1.")
        if not 0 <= self.elite < self.population:
            raise ValueError(f"GAConfig.elite={self.elite} must be in [0, population={self.population}).")
        for name in ("crossover", "mutation", "init_preference"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"GAConfig.{name}={getattr(self, name)} must be a probability in [0, 1].")
        for name in ("horizon_ticks", "replan_ticks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"GAConfig.{name}={value} must be >= 1, or None.")


def copy_sim(src: FleetSim, dst: FleetSim | None = None) -> FleetSim:
    """Copy the day state of ``src`` into ``dst`` (a new ``FleetSim`` of the same scenario when None)."""
    dst = FleetSim(src.scenario) if dst is None else dst
    for name in _SIM_FIELDS:
        getattr(dst, name)[...] = getattr(src, name)
    dst.tick, dst.unserved = src.tick, src.unserved
    return dst


def decode(
    sim: FleetSim, bases: np.ndarray, rules: np.ndarray, start_tick: int, block_ticks: int, mask: np.ndarray
) -> np.ndarray:
    """``[M]`` choices of a genome (``bases [M, K]``, ``rules [K, 3]``, planned at ``start_tick``) at ``sim``'s state.

    ``mask`` is ``sim.action_mask()``.
    """
    block = min((sim.tick - start_tick) // block_ticks, bases.shape[1] - 1)
    r = rules[block]
    choices = greedy_choices(sim, mask, min_profit=r[0], expiry_weight=r[1], energy_price=r[2])
    pref = bases[:, block]
    idle = sim.deciding() & (choices == sim.loc) & (pref >= 0) & (pref != sim.loc)
    if idle.any():
        go = idle & mask[sim.arange_m, np.maximum(pref, 0)]
        choices = np.where(go, pref, choices)
    return choices


class GAPlanner:
    """Plans for one scenario; ``choose(sim)`` returns the current plan's choices, replanning when due.

    Args:
        scenario: the scenario being played.
        config: budget and operators.
        rng: the planner's own stream (futures, selection, mutation).
    """

    def __init__(self, scenario: Scenario, config: GAConfig, rng: np.random.Generator) -> None:
        self.scenario, self.config, self.rng = scenario, config, rng
        self._work = FleetSim(scenario)
        self._population: tuple[np.ndarray, np.ndarray] | None = None
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._plan_tick = -1
        self.plan_seconds = 0.0
        self.plans = 0
        self.rollouts = 0
        self.best_fitness = math.nan

    def reset(self) -> None:
        """Forget the plan and population (call at the start of a new day)."""
        self._population, self._plan, self._plan_tick = None, None, -1

    def choose(self, sim: FleetSim) -> np.ndarray:
        """The plan's choices at the state of ``sim`` (planning first when one is due)."""
        cfg = self.config
        due = self._plan is None or sim.tick < self._plan_tick
        if not due and cfg.replan_ticks is not None:
            due = sim.tick - self._plan_tick >= cfg.replan_ticks
        if not due and cfg.horizon_ticks is not None:
            due = sim.tick - self._plan_tick >= cfg.horizon_ticks
        if due:
            self.plan(sim)
        bases, rules = self._plan  # type: ignore[misc]
        return decode(sim, bases, rules, self._plan_tick, cfg.block_ticks, sim.action_mask())

    def plan(self, sim: FleetSim) -> tuple[np.ndarray, np.ndarray]:
        """Evolve a genome from the state of ``sim`` and make it the current plan."""
        start = time.perf_counter()
        cfg = self.config
        horizon = sim.t_end - sim.tick if cfg.horizon_ticks is None else min(cfg.horizon_ticks, sim.t_end - sim.tick)
        blocks = max(1, math.ceil(horizon / cfg.block_ticks))
        bases, rules = self._initial_population(sim.tick, blocks, sim.m, sim.n)
        best, best_fit = (bases[0].copy(), rules[0].copy()), -math.inf
        for _ in range(cfg.generations):
            seeds = self.rng.integers(2**63, size=cfg.futures)
            fitness = np.array([self._evaluate(sim, bases[i], rules[i], horizon, seeds) for i in range(len(bases))])
            order = np.argsort(-fitness, kind="stable")
            # Fitness is re-estimated on new futures every generation; the plan is the last generation's winner
            # (elitism keeps earlier winners in the running, so each is re-scored rather than trusted once).
            best, best_fit = (bases[order[0]].copy(), rules[order[0]].copy()), float(fitness[order[0]])
            bases, rules = self._next_generation(bases, rules, fitness, order, sim.n)
        self._population, self._plan, self._plan_tick = (bases, rules), best, sim.tick
        self.best_fitness = best_fit
        self.plans += 1
        self.plan_seconds += time.perf_counter() - start
        return best

    def _initial_population(self, tick: int, blocks: int, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, rng = self.config, self.rng
        shape = (cfg.population, m, blocks)
        bases = np.where(rng.random(shape) < cfg.init_preference, rng.integers(n, size=shape), -1)
        rules = _random_rules(rng, (cfg.population, blocks))
        bases[0], rules[0] = -1, 0.0  # the greedy dispatcher
        if self._population is not None and self._plan_tick >= 0:
            # Warm start: the previous population, shifted by the blocks that have passed.
            shift = (tick - self._plan_tick) // cfg.block_ticks
            old_bases, old_rules = self._population[0][:, :, shift:], self._population[1][:, shift:]
            k = min(blocks, old_bases.shape[2])
            keep = min(cfg.population - 1, old_bases.shape[0])
            bases[1 : 1 + keep, :, :k] = old_bases[:keep, :, :k]
            rules[1 : 1 + keep, :k] = old_rules[:keep, :k]
        return bases, rules

    def _evaluate(self, sim: FleetSim, bases: np.ndarray, rules: np.ndarray, horizon: int, seeds: np.ndarray) -> float:
        work, cfg = self._work, self.config
        total = 0.0
        end = sim.tick + horizon
        for seed in seeds:
            copy_sim(sim, work)
            start_profit = work.totals[0]
            rng = np.random.default_rng(int(seed))
            work.draw_delays(rng)  # the pending delays are part of the unknown future too
            while work.tick < end and not work.done:
                mask = work.action_mask()
                work.step(decode(work, bases, rules, sim.tick, cfg.block_ticks, mask), rng, mask)
            total += work.totals[0] - start_profit
            self.rollouts += 1
        return total / len(seeds)

    def _next_generation(
        self, bases: np.ndarray, rules: np.ndarray, fitness: np.ndarray, order: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg, rng = self.config, self.rng
        new_bases, new_rules = np.empty_like(bases), np.empty_like(rules)
        elite = order[: cfg.elite]
        new_bases[: cfg.elite], new_rules[: cfg.elite] = bases[elite], rules[elite]
        for i in range(cfg.elite, bases.shape[0]):
            a = self._tournament(fitness)
            child_b, child_r = bases[a].copy(), rules[a].copy()
            if rng.random() < cfg.crossover:
                b = self._tournament(fitness)
                take = rng.random(child_b.shape) < 0.5
                child_b[take] = bases[b][take]
                take_r = rng.random(child_r.shape[0]) < 0.5
                child_r[take_r] = rules[b][take_r]
            mutate = rng.random(child_b.shape) < cfg.mutation
            if mutate.any():
                genes = np.where(rng.random(child_b.shape) < 0.5, -1, rng.integers(n, size=child_b.shape))
                child_b[mutate] = genes[mutate]
            mutate_r = rng.random(child_r.shape) < max(cfg.mutation * 5, 0.1)
            if mutate_r.any():
                noise = rng.normal(0.0, 0.15, child_r.shape) * (_RULE_HIGH - _RULE_LOW)
                child_r = np.where(mutate_r, np.clip(child_r + noise, _RULE_LOW, _RULE_HIGH), child_r)
            new_bases[i], new_rules[i] = child_b, child_r
        return new_bases, new_rules

    def _tournament(self, fitness: np.ndarray) -> int:
        entrants = self.rng.integers(fitness.shape[0], size=self.config.tournament)
        return int(entrants[np.argmax(fitness[entrants])])


#: Ranges of the rule genes per block: greedy's min_profit, expiry_weight and energy_price.
_RULE_LOW = np.array([-60.0, 0.0, 0.0])
_RULE_HIGH = np.array([150.0, 3.0, 300.0])


def _random_rules(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return _RULE_LOW + rng.random((*shape, _RULE_LOW.shape[0])) * (_RULE_HIGH - _RULE_LOW)
