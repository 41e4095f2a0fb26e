# The two commands a new user needs (README "Quick start"):
#   make test   builds the environment (once) and runs the test suite
#   make demo   builds the environment (once), makes the toy COCO and ADE20K
#               sets and trains RetinaNet and Semantic FPN + PoolFormer-S12 on
#               them from scratch on CPU; pictures in work_dirs/demo/
#
# STACK chooses the tested stack (requirements/stacks/, README "Supported
# versions"): current (default) or classic. Each has its own .venv-<stack>/.
STACK ?= current
VENV ?= .venv-$(STACK)
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two test processes, one thread each (tests/conftest.py); `make test
# TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= 2

.PHONY: env lint test test-all test-kernels demo clean-env

env:
	MMMETAFORMER_VENV=$(abspath $(VENV)) bash tools/setup_env.sh $(STACK)

# Lint, format and the architecture contracts (pyproject.toml).
lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd $(CURDIR) && PYTHONPATH=tools PATH=$(abspath $(VENV))/bin:$$PATH lint-imports

# Everything, end-to-end toy runs through the tools included (bounded: a
# few iterations each); the long toy trainings are `make demo`.
test: env
	$(PYTHON) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Both tested stacks, one after the other (what CI runs).
test-all:
	$(MAKE) test STACK=current
	$(MAKE) test STACK=classic

# The numeric contracts on another CPU's kernels: ATen's scalar kernels,
# oneDNN's SSE4.1 and MKL's SSE4.2 code paths (other blockings, other
# summation orders), as on an x86-64 CPU without AVX2. The tolerances come
# from the dtype and the reductions (tests/tolerance.py), so these pass on
# any CPU; this run checks that on a second kind of kernel.
KERNEL_TESTS = tests/test_backbones.py tests/test_fast_paths.py \
	tests/test_fuse.py tests/test_onnx.py tests/test_meta_device.py \
	tests/test_compile_hooks_amp.py tests/test_checkpoints.py
test-kernels: env
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
	MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	$(PYTHON) -m pytest $(KERNEL_TESTS) -q -n $(TEST_WORKERS) --dist loadfile

demo: env
	$(PYTHON) tools/demo.py

clean-env:
	rm -rf $(VENV)
