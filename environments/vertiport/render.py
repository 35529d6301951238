"""Compact text view of the vertiport env, its instructions, and the text action format.

Example (tiny scenario)::

    07:20 tick 2/18 | profit 412 | carried 12, left unserved 0
    V0 pads 2/3 idle 1 in 1 | waiting V1:3 V2:1
    V1 pads 1/2 idle 0 in 0 | waiting -
    closed: V0-V2 (3 ticks)
    decide: A0@V0 soc 82% -> V1 V2 | A3@V0 soc 35% -> stay only
    others: A1 flying V2->V0 (1) | A2 down at V1 (5)

Aircraft are ``A<i>``, vertiports ``V<j>``; an action assigns destinations, e.g. ``A0->V1, A3->V0``.
"""

from __future__ import annotations

import re

import numpy as np

from agentgym.env import BASE_CHARSET
from environments.vertiport.fleet import BOARDED, DOWN, FLYING, IDLE, STATUS_NAMES, FleetSim

TEXT_CHARSET = BASE_CHARSET
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_PAIR_RE = re.compile(r"\bA(\d+)\s*(?:->|=>|>|:|=|\bto\b)\s*V?(\d+)\b", re.IGNORECASE)
_STAY_RE = re.compile(r"^\W*(?:all\s+)?(?:stay|wait|hold|none|charge)\W*$", re.IGNORECASE)


def text_max_length(n: int, m: int) -> int:
    """An upper bound on the length of ``render_text`` for ``n`` vertiports and ``m`` aircraft."""
    return 200 + n * (60 + 9 * n) + 16 * n * n + m * (40 + 5 * n)


def _clock(minute: int) -> str:
    return f"{(minute // 60) % 100:02d}:{minute % 60:02d}"


def render_text(sim: FleetSim, mask: np.ndarray) -> str:
    """The compact text view of the current state."""
    s, n = sim.scenario, sim.n
    t = sim.tick
    totals = sim.totals
    lines = [
        f"{_clock(s.start_minute + t * s.tick_minutes)} tick {t}/{sim.t_end} | profit {totals[0]:.0f} | "
        f"carried {int(totals[5])}, left unserved {sim.unserved}"
    ]
    occ = sim.occupancy()
    idle = sim.status == IDLE
    idle_count = np.bincount(sim.loc[idle], minlength=n)
    moving = (sim.status == BOARDED) | (sim.status == FLYING)
    inbound = np.bincount(sim.dest[moving], minlength=n)
    waiting = sim.waiting.sum(0)
    for v in range(n):
        wait = " ".join(f"V{d}:{waiting[v, d]}" for d in np.flatnonzero(waiting[v]))
        lines.append(f"V{v} pads {occ[v]}/{s.pads[v]} idle {idle_count[v]} in {inbound[v]} | waiting {wait or '-'}")
    o, d = np.nonzero(np.triu(sim.closure > 0, 1))
    if o.size:
        lines.append("closed: " + ", ".join(f"V{a}-V{b} ({sim.closure[a, b]} ticks)" for a, b in zip(o, d)))
    decide = []
    for a in np.flatnonzero(idle):
        dests = [f"V{u}" for u in np.flatnonzero(mask[a]) if u != sim.loc[a]]
        decide.append(f"A{a}@V{sim.loc[a]} soc {sim.soc[a] * 100:.0f}% -> {' '.join(dests) or 'stay only'}")
    lines.append("decide: " + (" | ".join(decide) or "-"))
    others = []
    for a in np.flatnonzero(~idle):
        st = sim.status[a]
        if st == DOWN:
            others.append(f"A{a} down at V{sim.loc[a]} ({sim.timer[a]})")
        else:
            others.append(f"A{a} {STATUS_NAMES[st]} V{sim.loc[a]}->V{sim.dest[a]} ({sim.timer[a]})")
    lines.append("others: " + (" | ".join(others) or "-"))
    return "\n".join(lines)


def instructions(sim: FleetSim) -> str:
    """Rules and action format (stable for a scenario)."""
    s = sim.scenario
    return (
        f"You dispatch a fleet of {sim.m} electric air taxis (A0..A{sim.m - 1}, {s.seats} seats each) between "
        f"{sim.n} vertiports (V0..V{sim.n - 1}) over one day of {sim.t_end} ticks of {s.tick_minutes} minutes. "
        "Passengers wait at their origin for a destination and leave unserved after "
        f"{s.max_wait_ticks} ticks (penalty {s.unserved_penalty:g} each). When an idle aircraft departs, it "
        "boards the longest-waiting passengers for that destination; each pays the fare. A flight costs "
        f"{s.flight_cost:g} plus {s.cost_per_km:g} per km and {s.cost_per_passenger:g} per passenger, uses battery "
        f"in proportion to distance, and must leave at least {s.reserve_soc:.0%} charge. Idle aircraft charge "
        f"{s.charge_per_tick:.0%} per tick at {s.charge_cost:g} per full charge. Vertiports have limited pads, routes "
        "a limit of aircraft at once, and weather may close routes; take-offs may be delayed and aircraft may be "
        "down for maintenance. The goal is the highest profit for the day.\n"
        "Each step, the aircraft listed under 'decide' choose a destination among those shown (or stay and "
        "charge). Answer with assignments, for example <answer>A0->V2, A5->V1</answer>; aircraft you do not "
        "mention stay. Answer <answer>stay</answer> to keep every aircraft where it is."
    )


def parse_text_action(text: str, stay: np.ndarray, n: int) -> np.ndarray | None:
    """Destinations from text like ``A0->V2, A5->V1``; unmentioned aircraft keep ``stay``. None if unreadable.

    Out-of-range aircraft or vertiport numbers, or one aircraft given two different destinations, give None.
    """
    answers = _ANSWER_RE.findall(text)
    if answers:
        text = answers[-1]
    pairs = _PAIR_RE.findall(text)
    if not pairs:
        return stay.copy() if _STAY_RE.match(text.strip() or "x") else None
    choices = stay.copy()
    seen: dict[int, int] = {}
    for a_text, v_text in pairs:
        a, v = int(a_text), int(v_text)
        if a >= stay.shape[0] or v >= n or seen.get(a, v) != v:
            return None
        seen[a] = v
        choices[a] = v
    return choices
