"""Rule-based dispatchers for the vertiport env: random feasible destinations and greedy expected revenue.

The greedy rule ("highest expected revenue") is the env's oracle. Idle aircraft are served in order of
decreasing state of charge; each takes the allowed destination with the highest immediate profit

    min(seats, passengers still waiting for it) x (fare - cost per passenger) - flight cost - recharge cost,

if that profit is above ``min_profit``, and otherwise stays (and charges). Passengers, pads and route slots it
takes are removed from what later aircraft see, so two aircraft never chase the same passengers. It never flies
empty to where demand will be, and it does not weigh the penalty of passengers about to leave (``expiry_weight``
adds that): the GA planner tunes both per time block and adds repositioning.

The per-aircraft loop is compiled with numba (cached on disk after the first call), since the GA calls it in
every simulated tick.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from environments.vertiport.fleet import FleetSim


def random_choices(sim: FleetSim, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """``[M]`` uniform draws among each aircraft's allowed destinations (staying included)."""
    mask = sim.action_mask() if mask is None else mask
    scores = np.where(mask, rng.random(mask.shape), -1.0)
    return scores.argmax(1)


@nb.njit(cache=True)
def _greedy_kernel(
    order: np.ndarray,
    loc: np.ndarray,
    mask: np.ndarray,
    waiting: np.ndarray,
    expiring: np.ndarray,
    margin: np.ndarray,
    cost: np.ndarray,
    bonus: np.ndarray,
    pads_free: np.ndarray,
    route_free: np.ndarray,
    seats: int,
    min_profit: float,
    expiry_bonus: float,
    choices: np.ndarray,
) -> None:
    n = waiting.shape[0]
    for i in range(order.shape[0]):
        a = order[i]
        o = loc[a]
        best, best_value = -1, min_profit
        for u in range(n):
            if u == o or not mask[a, u] or pads_free[u] <= 0 or route_free[o, u] <= 0:
                continue
            pax = min(waiting[o, u], seats)
            if pax == 0 and bonus[u] <= 0.0:
                continue
            value = margin[o, u] * pax - cost[o, u] + expiry_bonus * min(expiring[o, u], pax) + bonus[u]
            if value > best_value:
                best, best_value = u, value
        if best >= 0:
            pax = min(waiting[o, best], seats)
            choices[a] = best
            waiting[o, best] -= pax
            expiring[o, best] -= min(expiring[o, best], pax)
            pads_free[best] -= 1
            route_free[o, best] -= 1


def greedy_choices(
    sim: FleetSim,
    mask: np.ndarray | None = None,
    *,
    min_profit: float = 0.0,
    expiry_weight: float = 0.0,
    energy_price: float = 0.0,
    destination_weight: float = 0.0,
) -> np.ndarray:
    """``[M]`` greedy destinations (see the module docstring); non-deciding aircraft get their destination.

    The defaults are the plain greedy rule; the GA planner tunes the other arguments per time block.

    Args:
        sim: the fleet state.
        mask: ``sim.action_mask()`` when already computed.
        min_profit: a flight is taken only if its value exceeds this.
        expiry_weight: adds this times the unserved penalty for each boarded passenger who would leave this tick.
        energy_price: an extra cost per unit of SoC a flight uses (a shadow price of charging time).
        destination_weight: adds this times ``destination_values(sim)`` of the destination (so an aircraft may fly
            empty towards coming demand).
    """
    s, n = sim.scenario, sim.n
    mask = sim.action_mask() if mask is None else mask
    choices = sim.dest.copy()
    deciding = np.flatnonzero(sim.deciding())
    if deciding.size == 0:
        return choices
    order = deciding[np.argsort(-sim.soc[deciding], kind="stable")]
    t = min(sim.tick, sim.t_end - 1)
    cost = sim.fixed_flight_cost + energy_price * s.energy if energy_price else sim.fixed_flight_cost
    bonus = destination_weight * destination_values(sim) if destination_weight else np.zeros(n)
    _greedy_kernel(
        order,
        sim.loc,
        mask,
        sim.waiting.sum(0),
        sim.waiting[-1].copy(),
        s.fare[t] - s.cost_per_passenger,
        cost,
        bonus,
        s.pads - sim.occupancy(),
        s.route_capacity - sim.route_use().reshape(n, n),
        int(s.seats),
        float(min_profit),
        float(expiry_weight * s.unserved_penalty),
        choices,
    )
    return choices


def destination_values(sim: FleetSim, lookahead: int = 3) -> np.ndarray:
    """``[N]`` expected fare revenue leaving each vertiport over the next ``lookahead`` ticks, per aircraft there.

    The aircraft counted are those on the ground at, or flying to, the vertiport (plus one for the arriving one).
    """
    s = sim.scenario
    t = sim.tick + 1
    rate = s.demand_rate[t : t + lookahead]
    revenue = (rate * s.fare[t : t + lookahead]).sum((0, 2))
    return revenue / (1.0 + np.bincount(sim.dest, minlength=sim.n))
