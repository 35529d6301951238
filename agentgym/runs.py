"""Run directories: resolved config, metrics (JSONL + TensorBoard), resumable checkpoints, samples, report.

A checkpoint is written into a temporary directory and renamed into place only when complete, and ``latest``
is replaced atomically afterwards, so a crash or a full disk during a save leaves the previous checkpoint
loadable. A failed save is logged as skipped (``checkpoint_skipped`` in metrics.jsonl) and the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agentgym.config import load_config
from agentgym.errors import AgentGymError


def _save_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a failed checkpoint write.

    ``OSError``, and on a full disk also torch.save's ``RuntimeError`` (its stream writer fails) and safetensors'
    ``SafetensorError`` (the policy weights).
    """
    errors: list[type[BaseException]] = [OSError, RuntimeError]
    try:
        from safetensors import SafetensorError
    except ImportError:  # safetensors comes with transformers (the llm extra)
        pass
    else:
        errors.append(SafetensorError)
    return tuple(errors)


class RunDir:
    """One training run's directory.

    Layout::

        config.yaml          resolved config (with trainer and env ids)
        metrics.jsonl        one JSON object per logged step
        tensorboard/         TensorBoard event files
        checkpoints/step-N/  trainer_state.json + whatever the trainer saves (model or adapter, optimizer, RNG)
        checkpoints/latest   the name of the newest complete checkpoint
        samples/             trajectories (JSONL) from training and evaluation
        report.md, *.png     the report
    """

    def __init__(self, path: str | Path, *, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        (self.path / "samples").mkdir(exist_ok=True)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in the llm extra; metrics.jsonl still has everything
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(self.path / "tensorboard"))

    # ------------------------------------------------------------------ config and metrics
    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved config."""
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The config a previous run wrote (for ``--resume``)."""
        path = self.path / "config.yaml"
        if not path.is_file():
            raise AgentGymError(f"{self.path} is not a run directory (no config.yaml); pass the --out of a run.")
        return yaml.safe_load(path.read_text()) or {}

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append a metrics record and mirror numeric values to TensorBoard."""
        record = {"step": step, "time": time.time(), **metrics}
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """All metrics records so far."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (resuming from a checkpoint replays the steps after it)."""
        records = [r for r in self.metrics() if r.get("step", 0) <= step]
        (self.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self, step: int, write: Callable[[Path], None], state: dict[str, Any], *, keep: int = 2
    ) -> Path | None:
        """Write a checkpoint atomically; returns its path, or None when the save failed (logged, run goes on)."""
        root = self.path / "checkpoints"
        final = root / f"step-{step:06d}"
        tmp = root / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            write(tmp)
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, default=float))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            latest_tmp = root / ".latest.tmp"
            latest_tmp.write_text(final.name)
            os.replace(latest_tmp, root / "latest")
        except _save_errors() as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            self.log(step, {"checkpoint_skipped": 1.0, "checkpoint_error": f"{type(exc).__name__}: {exc}"})
            warnings.warn(f"checkpoint step {step} was not saved ({type(exc).__name__}: {exc}); the previous one "
                          "stays the latest and training goes on. Free disk space so later ones are saved.",
                          stacklevel=2)
            return None
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.path / "checkpoints" / "latest"
        if not pointer.is_file():
            return None
        path = self.path / "checkpoints" / pointer.read_text().strip()
        return path if (path / "trainer_state.json").is_file() else None

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def load_run(run_dir: str | Path, config_cls: type) -> tuple[Any, Path]:
    """A finished or running run's config (as ``config_cls``) and its latest complete checkpoint directory.

    Raises:
        AgentGymError: the run has no complete checkpoint yet.
    """
    run = RunDir(run_dir, tensorboard=False)
    values = run.read_config()
    values.pop("trainer", None)
    cfg = load_config(config_cls, base=values)
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise AgentGymError(f"{run_dir} has no complete checkpoint yet; train longer or pass another run.")
    return cfg, checkpoint
