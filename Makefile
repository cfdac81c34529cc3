.PHONY: setup up test lint protos image chart-schema

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

# The container image (Containerfile): VARIANT=cpu or cuda; CONTAINER_TOOL=podman or docker.
IMAGE ?= ghcr.io/minmo/minmo
VARIANT ?= cpu
CONTAINER_TOOL ?= podman
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG := $(VERSION)$(if $(filter cuda,$(VARIANT)),-cuda)

image:
	$(CONTAINER_TOOL) build -f Containerfile --build-arg VARIANT=$(VARIANT) -t $(IMAGE):$(TAG) .

# Regenerate deploy/helm/minmo/values.schema.json from values.yaml (a test fails when they drift).
chart-schema:
	.venv/bin/minmo k8s schema --chart deploy/helm/minmo
