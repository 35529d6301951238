# The two commands of the README's quick start; both set everything up themselves (scripts/setup.sh).
.PHONY: setup train demo test check

setup:
	@bash scripts/setup.sh

# The main job: LOOP on Sokoban with the embedded default model (a run directory under runs/).
train: setup
	.venv/bin/agentgym train --env sokoban --trainer loop

# A quick look without training: the Sokoban oracle on 20 held-out levels.
demo: setup
	.venv/bin/agentgym eval --env sokoban --policy oracle --episodes 20

test: setup
	.venv/bin/python -m pytest -q -n 2 tests

check: setup
	.venv/bin/agentgym check all
