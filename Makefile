# The two commands of the README's quick start; both set everything up themselves (scripts/setup.sh).
.PHONY: setup demo test check bench

setup:
	@bash scripts/setup.sh

# The main job. Until the trainers land (issue: Trainers) it evaluates the Sokoban oracle on held-out levels.
demo: setup
	.venv/bin/agentgym eval --env sokoban --policy oracle --episodes 20

test: setup
	.venv/bin/python -m pytest -q -n 2 tests

check: setup
	.venv/bin/agentgym check all
