"""Text views of an inventory network: the rules (``instructions``) and the per-period state (``render_state``)."""

from __future__ import annotations

import numpy as np

from environments.supplychain.settings import Setting

#: Characters per inventory slot and per fixed part of a line, for ``text_max_length``.
_SLOT_CHARS, _LINE_CHARS = 16, 120


def node_names(setting: Setting) -> list[str]:
    """Display names of the ordering nodes, in action order: stores, then the warehouse and echelons."""
    stores = ["store"] if setting.n_stores == 1 else [f"store {i + 1}" for i in range(setting.n_stores)]
    upstream = ["warehouse"] + [f"echelon {k}" for k in range(1, setting.n_upstream)]
    return stores + upstream[: setting.n_upstream]


def text_max_length(setting: Setting) -> int:
    """An upper bound on the length of ``render_state``'s text for this setting."""
    slots = max(setting.store_slots, setting.upstream_slots)
    return 400 + (setting.n_orders + 1) * (_LINE_CHARS + _SLOT_CHARS * (slots + 2))


def instructions(setting: Setting, periods: int, warmup: int, margin: float) -> str:
    """The rules of the setting and the answer format."""
    names = node_names(setting)
    sales = (
        "Demand that a store cannot meet from stock on hand is lost."
        if setting.lost_sales
        else "Demand that a store cannot meet from stock on hand is backlogged and served later."
    )
    supply = (
        "Stores order from an unlimited supplier."
        if setting.n_upstream == 0
        else "Stores order from the warehouse, which can only ship what it has on hand (requests beyond that are "
        "scaled down proportionally); each upstream stage orders from the one above it, and the top stage from an "
        "unlimited supplier."
    )
    example = ", ".join(["5"] * len(names))
    return (
        f"You manage the inventory of a supply network ({setting.describe()}) for {periods} periods. Every period "
        f"you order a non-negative quantity for each of: {', '.join(names)}. An order placed now arrives after the "
        f"node's lead time (an order placed in period t is on hand at the start of period t + L). {supply} Then "
        f"each store's demand is served from its stock on hand. {sales} Each period costs, per store, the holding "
        "cost for every unit left on hand plus the underage cost for every unit of unmet demand, plus the holding "
        "cost of every unit on hand at the upstream stages. The reward is minus the cost. Goal: keep the average "
        f"cost after period {warmup} within {margin:.0%} of the expert's cost on the same demand.\n"
        f"Answer with {len(names)} order quantit{'y' if len(names) == 1 else 'ies'} in the order above, for "
        f"example <answer>{example}</answer>."
    )


def render_state(
    setting: Setting,
    period: int,
    periods: int,
    store: np.ndarray,
    upstream: np.ndarray,
    last: dict[str, np.ndarray | float] | None,
) -> str:
    """The state at the start of ``period``: each node's inventory vector, then the last period's outcome."""
    names = node_names(setting)
    lines = [f"Period {period + 1} of {periods}." if period < periods else f"All {periods} periods done."]
    for i in range(setting.n_stores):
        lines.append(
            _node_line(names[i], store[i], setting.lead_times[i])
            + f" holding {setting.holding_costs[i]:g}, underage {setting.underage_costs[i]:g}."
        )
    for k in range(setting.n_upstream):
        lead = setting.upstream_lead_times[k]
        lines.append(
            _node_line(names[setting.n_stores + k], upstream[k], lead)
            + f" holding {setting.upstream_holding_costs[k]:g}."
        )
    if last is not None:
        demand = " ".join(f"{x:.2f}" for x in np.atleast_1d(last["demand"]))
        shipped = " ".join(f"{x:.2f}" for x in np.atleast_1d(last["shipped"]))
        lines.append(
            f"Last period: demand {demand}; shipped {shipped}; cost {float(last['cost']):.2f} "
            f"(average so far {float(last['average']):.2f})."
        )
    return "\n".join(lines)


def _node_line(name: str, vector: np.ndarray, lead: int) -> str:
    pipeline = " ".join(f"{x:.2f}" for x in vector[1:lead])
    arriving = f", arriving in 1..{lead - 1} periods: {pipeline}" if lead > 1 else ""
    return f"{name}: on hand {vector[0]:.2f}{arriving} (lead time {lead});"
