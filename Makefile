# The two commands a new user needs (README "Quick start"):
#   make test   builds .venv (once) and runs the default test suite
#   make demo   builds .venv (once), makes a toy COCO set and trains/tests
#               RetinaNet + PoolFormer-S12 on it on CPU
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-slow demo clean-env

env:
	bash tools/setup_env.sh

test: env
	$(PYTHON) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

# Long end-to-end runs (full toy trainings); not part of `make test`.
test-slow: env
	$(PYTHON) -m pytest tests -q -m slow $(PYTEST_ARGS)

demo: env
	$(PYTHON) tools/demo.py

clean-env:
	rm -rf $(VENV)
