"""HDPO and the inventory policies: parameters move, the one-store optimum is learned, resume is exact, eval agrees."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

import agentgym  # noqa: E402
from agentgym.config import ConfigError, load_config  # noqa: E402
from agentgym.evaluation import evaluate_policy  # noqa: E402
from agentgym.runs import RunDir  # noqa: E402
from environments.supplychain.demand import DemandModel  # noqa: E402
from environments.supplychain.settings import make_setting  # noqa: E402
from environments.supplychain.simulator import InventorySimulator  # noqa: E402
from policies.gnn.inventory import InventoryGNN, InventoryMLP, NetworkSpec  # noqa: E402
from trainers.hdpo import HDPOTrainer  # noqa: E402

SMALL = [
    "train_samples=256",
    "batch_size=128",
    "train_periods=30",
    "train_ignore_periods=10",
    "dev_samples=128",
    "dev_periods=40",
    "dev_ignore_periods=10",
    "test_samples=128",
    "test_periods=60",
    "test_ignore_periods=20",
    "checkpoint_every=1",
]


def _trainer(tmp_path, *overrides, name="run"):
    cfg = load_config(HDPOTrainer.Config, overrides=[*SMALL, *overrides])
    return HDPOTrainer(cfg, RunDir(tmp_path / name, tensorboard=False))


@pytest.mark.parametrize("kind", ["mlp", "gnn"])
def test_every_trainable_parameter_changes(tmp_path, kind):
    trainer = _trainer(tmp_path, "env.id=supplychain-warehouse", "env.kwargs={n_stores: 3}", f"policy.kind={kind}")
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    train = trainer.scenarios("train", 256, 30)
    stats = trainer.train_epoch(0, train)
    assert stats["optimizer_steps"] == 2 and np.isfinite(stats["loss"])
    unchanged = [n for n, p in trainer.policy.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged


def test_one_store_backlogged_reaches_the_optimum_within_a_few_percent(tmp_path):
    # Base-stock is optimal here; the test cost includes rounding orders to integers (about +0.3% by itself).
    cfg = load_config(
        HDPOTrainer.Config,
        overrides=["iterations=14", "test_samples=1024", "test_periods=300", "eval_every=2"],
    )
    trainer = HDPOTrainer(cfg, RunDir(tmp_path / "learn", tensorboard=False))
    final = trainer.fit()
    assert final["eval/test/gap_vs_oracle"] < 0.03, final
    assert final["eval/test/success_rate"] > 0.8
    assert final["eval/test/jit_lower_bound"] <= final["eval/test/oracle_cost"]
    start = trainer.run.metrics()[0]
    assert start["eval/test/gap_vs_oracle"] > 0.5  # the untrained network is far from it


def test_resume_after_interrupt_continues_exactly(tmp_path):
    straight = _trainer(tmp_path, "iterations=4", name="straight")
    straight.fit()

    interrupted = _trainer(tmp_path, "iterations=4", name="interrupted")

    def stop(done, metrics):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(on_iteration=stop)
    resumed = _trainer(tmp_path, "iterations=4", name="interrupted")
    resumed.fit(resume=True)
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.best_dev == resumed.best_dev
    steps = [r["step"] for r in resumed.run.metrics() if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_policy_from_run_plays_the_env_exactly_like_the_simulator(tmp_path):
    trainer = _trainer(tmp_path, "iterations=2", "env.id=supplychain-lost")
    trainer.fit()
    actor = HDPOTrainer.policy_from_run(trainer.run.path, temperature=0.7)
    summary, trajectories = evaluate_policy(
        "supplychain-lost", actor, episodes=3, split="test", env_kwargs={"periods": 25, "warmup_periods": 5}
    )
    env = agentgym.make("supplychain-lost", periods=25, warmup_periods=5).unwrapped
    seeds = [int(t.task) for t in trajectories]
    scenarios = DemandModel(env.setting).scenarios(seeds, 25, ["test"] * 3)
    sim = InventorySimulator(env.setting, dtype=torch.float32)
    trainer.policy.load_state_dict(trainer.best_state)
    with torch.no_grad():
        cost = sim.rollout(
            trainer.policy.sim_policy(), sim.initial_state(scenarios), sim.demand(scenarios), round_orders=True
        )
    np.testing.assert_allclose([t.episode_return for t in trajectories], -cost.total.numpy(), rtol=1e-4)
    assert summary.invalid_action_rate == 0.0


def test_cli_train_then_eval(tmp_path):
    from agentgym.cli import main

    out = tmp_path / "cli"
    overrides = [arg for pair in SMALL for arg in ("--set", pair)]
    assert (
        main(
            [
                "train",
                "--env",
                "supplychain",
                "--trainer",
                "hdpo",
                "--out",
                str(out),
                "--set",
                "iterations=1",
                *overrides,
            ]
        )
        == 0
    )
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    assert (
        main(
            [
                "eval",
                "--env",
                "supplychain",
                "--policy",
                str(out),
                "-n",
                "2",
                "--env-kwargs",
                "periods=10",
                "warmup_periods=2",
            ]
        )
        == 0
    )


def test_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="batch_size=512 exceeds train_samples=100"):
        load_config(HDPOTrainer.Config, overrides=["train_samples=100"])
    with pytest.raises(ConfigError, match="dev_ignore_periods=100 must be in"):
        load_config(HDPOTrainer.Config, overrides=["dev_ignore_periods=100"])
    with pytest.raises(ConfigError, match="policy.kind"):
        load_config(HDPOTrainer.Config, overrides=["policy.kind=transformer"])


def test_gnn_shares_its_store_head_and_batches_graphs_correctly():
    setting = make_setting(
        "one_warehouse_lost",
        n_stores=4,
        lead_time=2,
        demand_mean=5.0,
        demand_std=1.5,
        holding_cost=1.0,
        underage_cost=9.0,
    )
    sim = InventorySimulator(setting)
    torch.manual_seed(0)
    policy = InventoryGNN(NetworkSpec.from_simulator(sim), hidden=16, layers=2)
    store = torch.rand(5, 4, 2) * 10
    upstream = torch.full((5, 1, 3), 1000.0)  # plenty at the warehouse: no rationing
    orders = policy(store, upstream)
    assert (orders >= 0).all()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = policy(store[:, perm], upstream)
    torch.testing.assert_close(permuted[:, :4], orders[:, perm])  # identical stores: orders permute along
    one_by_one = torch.cat([policy(store[i : i + 1], upstream[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(one_by_one, orders)


@pytest.mark.parametrize("cls", [InventoryMLP, InventoryGNN])
def test_store_orders_never_exceed_the_warehouse_stock(cls):
    sim = InventorySimulator(make_setting("one_warehouse_lost", n_stores=5))
    policy = cls(NetworkSpec.from_simulator(sim))
    store = torch.zeros(8, 5, sim.setting.store_slots)
    upstream = torch.zeros(8, 1, 3)
    upstream[:, 0, 0] = torch.linspace(0.0, 7.0, 8)
    orders = policy(store, upstream)
    assert (orders[:, :5].sum(1) <= upstream[:, 0, 0] + 1e-5).all()
    assert (orders >= 0).all() and orders[:, 5].gt(0).all()


def test_time_budget_stops_after_one_iteration_and_still_tests(tmp_path):
    trainer = _trainer(tmp_path, "iterations=5", "time_budget_minutes=0.0")
    final = trainer.fit()
    records = trainer.run.metrics()
    assert [r["step"] for r in records if "loss" in r] == [1]
    assert any("stopped_time_budget_minutes" in r for r in records)
    assert "eval/test/cost" in final
