# The two commands a new user needs (README "Quick start"):
#   make test   builds .venv (once) and runs the default test suite
#   make demo   builds .venv (once), makes the toy COCO and ADE20K sets and
#               trains RetinaNet and Semantic FPN + PoolFormer-S12 on them
#               from scratch on CPU; pictures in work_dirs/demo/
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two test processes, one thread each (tests/conftest.py); `make test
# TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= 2

.PHONY: env test demo clean-env

env:
	bash tools/setup_env.sh

# Everything, end-to-end toy runs through the tools included (bounded: a
# few iterations each); the long toy trainings are `make demo`.
test: env
	$(PYTHON) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# About 12 minutes on 2 cores; each phase prints its wall time.
demo: env
	$(PYTHON) tools/demo.py

clean-env:
	rm -rf $(VENV)
