"""Test-session setup shared by every test file.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist
loadfile``: a file's module fixtures are built once, in one worker). Each
worker then computes with one thread, and so do the tool subprocesses it
starts (they inherit ``OMP_NUM_THREADS``): two workers x two threads would
oversubscribe a 2-core machine, and most of the suite's time is spent in
single-threaded Python (imports, config parsing, data pipelines) that two
processes overlap.

What only the tools use lives beside the package, in
``tools/mmmetaformer_tools``; the tests import it as the tools do, with
``tools/`` on ``sys.path`` (and on ``PYTHONPATH`` for the processes they
start).
"""

import os
import sys

TOOLS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'
)
sys.path.insert(0, TOOLS)
os.environ['PYTHONPATH'] = os.pathsep.join(
    [TOOLS] + [p for p in [os.environ.get('PYTHONPATH')] if p]
)

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    os.environ['MKL_NUM_THREADS'] = '1'
    import torch

    torch.set_num_threads(1)


# Seconds each file takes in a two-worker run on 2 cores (pytest
# --durations=0; the run is in docs/benchmarks.md). xdist hands whole
# files to whichever worker is free in collection order, so the longest go
# first: otherwise a long file collected last keeps one worker busy while
# the other idles.
FILE_SECONDS = {
    'test_det_configs.py': 146,
    'test_seg_configs.py': 119,
    'test_benchmark_tool.py': 87,
    'test_checkpoints.py': 85,
    'test_foundation.py': 83,
    'test_modern_heads.py': 83,
    'test_compile_hooks_amp.py': 83,
    'test_ecosystem.py': 62,
    'test_convert_and_infer.py': 61,
    'test_demo.py': 48,
    'test_backbones.py': 45,
    'test_safe_loading.py': 44,
    'test_recipes.py': 39,
    'test_export.py': 38,
    'test_tool_outputs.py': 34,
    'test_hub.py': 32,
    'test_cross_stack.py': 32,
    'test_training_guards.py': 27,
    'test_complexity.py': 26,
    'test_registry.py': 25,
    'test_broken_inputs.py': 24,
    'test_resume.py': 24,
    'test_model_index.py': 23,
    'test_quiet_tools.py': 16,
    'test_dense_checkpoints.py': 12,
    'test_fast_paths.py': 11,
    'test_runtime_fragment.py': 11,
    'test_packaging.py': 10,
    'test_openvino.py': 10,
    'test_reader_bounds.py': 10,
    'test_data_checks.py': 9,
    'test_fuse.py': 8,
    'test_layer_decay.py': 6,
    'test_images.py': 6,
    'test_onnx.py': 5,
}


def pytest_collection_modifyitems(session, config, items):
    """Longest files first; the order within a file is kept."""
    position = {item: i for i, item in enumerate(items)}
    items.sort(
        key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), position[item])
    )
