# The two commands a new user needs (README "Quick start"):
#   make test   builds .venv (once) and runs the default test suite
#   make demo   builds .venv (once), makes a toy COCO set and trains/tests
#               RetinaNet + PoolFormer-S12 on it on CPU
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo clean-env

env:
	bash tools/setup_env.sh

# Everything, end-to-end toy runs through the tools included (bounded: a
# few iterations each); the long toy trainings are `make demo`.
test: env
	$(PYTHON) -m pytest tests -q $(PYTEST_ARGS)

demo: env
	$(PYTHON) tools/demo.py

clean-env:
	rm -rf $(VENV)
