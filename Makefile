# The two commands the README starts with. Both are safe to run again.
#   make demo   the local autoscaling demo on the embedded defaults
#   make test   the whole test suite (what .ci/run calls)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap image demo test test-fast bench lint clean

bootstrap:
	scripts/bootstrap.sh

image: bootstrap
	scripts/build-image.sh

demo: image
	$(VENV)/bin/cms-demo

test: image
	scripts/run-tests.sh

test-fast: bootstrap
	$(PY) -m pytest -q tests/unit

bench: image
	for b in bench/*.py; do $(PY) $$b || exit 1; done
