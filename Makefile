.PHONY: setup up test lint protos

setup:
	./scripts/setup.sh

up: setup
	.venv/bin/minmo up

test: setup
	.venv/bin/ruff check . && .venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check .

protos:
	.venv/bin/python -m minmo.api.generate
	.venv/bin/python -m minmo.api.docs
