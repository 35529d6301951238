"""Run directories: atomic checkpoints that survive a failed save, metrics, config round trip."""

from __future__ import annotations

import errno

import pytest

from agentgym.config import load_config, to_dict
from agentgym.errors import AgentGymError
from agentgym.runs import RunDir


def _write(payload: str):
    def write(directory):
        (directory / "weights.bin").write_text(payload)

    return write


def test_a_failed_save_keeps_the_previous_checkpoint_and_is_logged(tmp_path):
    run = RunDir(tmp_path, tensorboard=False)
    first = run.save_checkpoint(1, _write("one"), {"iteration": 1})
    assert run.latest_checkpoint() == first

    def disk_full(directory):
        (directory / "weights.bin").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.warns(UserWarning, match="checkpoint step 2 was not saved"):
        assert run.save_checkpoint(2, disk_full, {"iteration": 2}) is None
    latest = run.latest_checkpoint()
    assert latest == first and (latest / "weights.bin").read_text() == "one"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # no half-written directory is left behind
    skipped = [r for r in run.metrics() if r.get("checkpoint_skipped")]
    assert skipped and "No space left" in skipped[0]["checkpoint_error"]


def _torch_disk_full(directory):
    (directory / "optimizer.pt").write_text("partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1065656576 vs 1065656464")


def _safetensors_disk_full(directory):
    safetensors = pytest.importorskip("safetensors")
    (directory / "model.safetensors").write_text("partial")
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("fail", [_torch_disk_full, _safetensors_disk_full])
def test_a_full_disk_in_torch_or_safetensors_skips_the_save_and_the_run_goes_on(tmp_path, fail):
    # On a full disk torch.save raises RuntimeError and safetensors SafetensorError, not OSError.
    run = RunDir(tmp_path, tensorboard=False)
    first = run.save_checkpoint(1, _write("one"), {"iteration": 1})
    with pytest.warns(UserWarning, match="checkpoint step 2 was not saved .* training goes on"):
        assert run.save_checkpoint(2, fail, {"iteration": 2}) is None
    assert run.latest_checkpoint() == first and (first / "weights.bin").read_text() == "one"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert [r["checkpoint_error"].split(":")[0] for r in run.metrics() if r.get("checkpoint_skipped")] == [
        "RuntimeError" if fail is _torch_disk_full else "SafetensorError"]
    assert run.save_checkpoint(3, _write("three"), {"iteration": 3}) == run.latest_checkpoint()  # space is back


def test_old_checkpoints_are_pruned_and_metrics_truncate_on_resume(tmp_path):
    run = RunDir(tmp_path, tensorboard=False)
    for step in range(1, 5):
        run.log(step, {"loss": float(step)})
        run.save_checkpoint(step, _write(str(step)), {"iteration": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000003", "step-000004"]
    run.truncate_metrics(2)
    assert [r["step"] for r in run.metrics()] == [1, 2]


def test_config_round_trips_through_the_run_directory(tmp_path):
    from trainers.loop import LoopConfig

    cfg = load_config(LoopConfig, overrides=["lr=3e-4", "policy.temperature=0.7", "env.kwargs={preset: small}"])
    run = RunDir(tmp_path, tensorboard=False)
    run.write_config({"trainer": "loop", **to_dict(cfg)})
    back = run.read_config()
    assert back.pop("trainer") == "loop"
    assert load_config(LoopConfig, base=back) == cfg
    with pytest.raises(AgentGymError, match="not a run directory"):
        RunDir(tmp_path / "elsewhere", tensorboard=False).read_config()
