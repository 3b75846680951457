# The README's two commands. Each installs what is missing (scripts/setup.sh is idempotent), then runs.
.PHONY: setup demo test

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/python launch.py

test: setup
	.venv/bin/python -m pytest
