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
    'test_det_configs.py': 123,
    'test_seg_configs.py': 89,
    'test_foundation.py': 73,
    'test_benchmark_tool.py': 67,
    'test_modern_heads.py': 58,
    'test_checkpoints.py': 54,
    'test_compile_hooks_amp.py': 54,
    'test_convert_and_infer.py': 47,
    'test_ecosystem.py': 45,
    'test_demo.py': 38,
    'test_backbones.py': 35,
    'test_recipes.py': 32,
    'test_cross_stack.py': 31,
    'test_export.py': 28,
    'test_complexity.py': 26,
    'test_tool_outputs.py': 24,
    'test_hub.py': 22,
    'test_safe_loading.py': 22,
    'test_training_guards.py': 22,
    'test_resume.py': 22,
    'test_registry.py': 21,
    'test_model_index.py': 20,
    'test_broken_inputs.py': 13,
    'test_quiet_tools.py': 13,
    'test_fast_paths.py': 12,
    'test_runtime_fragment.py': 10,
    'test_openvino.py': 9,
    'test_data_checks.py': 8,
    'test_packaging.py': 8,
    'test_reader_bounds.py': 7,
    'test_dense_checkpoints.py': 6,
    'test_fuse.py': 6,
    'test_layer_decay.py': 6,
    'test_images.py': 5,
    'test_onnx.py': 4,
    'test_toy_dataset.py': 3,
    'test_meta_device.py': 1,
    'test_arch_validation.py': 0,
    'test_reader_fuzz.py': 0,
}


def pytest_collection_modifyitems(session, config, items):
    """Longest files first; the order within a file is kept."""
    position = {item: i for i, item in enumerate(items)}
    items.sort(
        key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), position[item])
    )
