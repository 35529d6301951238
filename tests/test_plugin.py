"""The README's plugin example, for real: pip-install examples/corridor_plugin and find it through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_plugin_is_discovered_and_passes_check(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "corridor_plugin"),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import agentgym, gymnasium; "
        "print(agentgym.spec('corridor').id); "
        "print(type(gymnasium.make('corridor/Corridor-v0').unwrapped).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    assert out.split() == ["corridor/Corridor-v0", "CorridorEnv"]
    cli = Path(sys.executable).with_name("agentgym")
    checked = subprocess.run([str(cli), "check", "corridor"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("│ pass ") == 4
