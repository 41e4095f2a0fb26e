"""Checkpoints move between the tested stacks (requirements/stacks/).

What differs between a checkpoint written on the classic stack (numpy 1) and
one written on the current stack (numpy 2) is how its pickle names numpy's
array and scalar rebuilders: ``numpy.core.multiarray`` against
``numpy._core.multiarray`` (the message hub's histories are numpy arrays
and scalars). A Runner checkpoint written here is rewritten record by record
into the other stack's spelling (torch's own archive reader and writer, so
the archive stays what torch writes), and it must resume training through
``tools/train.py --resume`` and evaluate through ``tools/test.py``.

When the other stack's environment (``.venv-<stack>``) is there too, a
checkpoint written by that stack's interpreter is resumed and evaluated by
this one: the real crossing.
"""

import re
import subprocess
import sys
from pathlib import Path

from mmmetaformer_tools.toy import make_ade20k

import numpy as np
import pytest
import torch

from .helpers import REPO_ROOT, built_stack, run_tool

TOY_CONFIG = (
    REPO_ROOT / 'configs/toy' / 'semantic_fpn_poolformer_s12_toy_ade20k.py'
)
# The toy Semantic FPN with one narrow block per stage and a narrow neck and
# head: what crosses the stacks is the checkpoint's pickle, not its widths.
TINY = (
    f'_base_ = [{str(TOY_CONFIG)!r}]\n'
    'model = dict(\n'
    '    backbone=dict(arch=dict(_delete_=True, depths=[1, 1, 1, 1],\n'
    '                            dims=[16, 32, 64, 64])),\n'
    '    neck=dict(in_channels=[16, 32, 64, 64], out_channels=32),\n'
    '    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32))\n'
)
# 2 iterations of 2 random 96x96 crops, a checkpoint at the end.
OPTIONS = [
    'train_dataloader.batch_size=2',
    'train_dataloader.dataset.indices=2',
    'val_dataloader.dataset.indices=1',
    'train_cfg.val_interval=100',
    'default_hooks.checkpoint.interval=2',
]
CONFIG_NAME = 'semantic_fpn_tiny_toy_ade20k.py'  # in each test's folder
NUMPY_MODULES = {1: b'numpy.core.multiarray', 2: b'numpy._core.multiarray'}
MIOU = re.compile(r'mIoU: [\d.]+')


def train(cwd, work_dir, iters, *extra, python=sys.executable):
    cmd = [
        python,
        str(REPO_ROOT / 'tools' / 'train.py'),
        str(cwd / CONFIG_NAME),
        '--work-dir',
        str(work_dir),
        *extra,
        '--cfg-options',
        *OPTIONS,
        f'train_cfg.max_iters={iters}',
    ]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def with_numpy_spelling(src, dst, numpy_major):
    """Copy the torch archive ``src`` to ``dst`` with its pickle naming
    numpy's rebuilders as numpy ``numpy_major`` writes them."""
    reader = torch._C.PyTorchFileReader(str(src))
    writer = torch._C.PyTorchFileWriter(str(dst))
    wanted = NUMPY_MODULES[numpy_major]
    rewritten = False
    for name in reader.get_all_records():
        if name == '.data/version' or name == 'version':
            continue  # the writer writes its own
        data = reader.get_record(name)
        if name.endswith('data.pkl'):
            for spelling in NUMPY_MODULES.values():
                data = data.replace(
                    b'c' + spelling + b'\n', b'c' + wanted + b'\n'
                )
            rewritten = b'c' + wanted + b'\n' in data
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    assert rewritten, f'{src} names no numpy rebuilder'


@pytest.fixture(scope='module')
def toy_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('cross_stack')
    (cwd / CONFIG_NAME).write_text(TINY)
    make_ade20k(
        cwd / 'data' / 'toy_ade20k',
        num_train=2,
        num_val=1,
        img_size=96,
        seed=0,
    )
    return cwd


@pytest.fixture(scope='module')
def written_here(toy_cwd):
    work_dir = toy_cwd / 'here'
    train(toy_cwd, work_dir, 2)
    return work_dir / 'iter_2.pth'


def resume_and_evaluate(cwd, checkpoint, name):
    out = train(cwd, cwd / f'resumed_{name}', 4, '--resume', str(checkpoint))
    assert 'resumed epoch: 0, iter: 2' in out, out[-3000:]
    assert (cwd / f'resumed_{name}' / 'iter_4.pth').exists()
    proc = run_tool(
        'test.py',
        cwd / CONFIG_NAME,
        checkpoint,
        '--work-dir',
        cwd / f'test_{name}',
        '--cfg-options',
        'test_dataloader.dataset.indices=1',
        cwd=cwd,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert MIOU.search(proc.stdout + proc.stderr)


def test_checkpoint_of_the_other_numpy_resumes_and_evaluates(toy_cwd, request):
    # This stack's own spelling is the file as written, which every resume
    # test reads; the other spelling is what a checkpoint from the other
    # stack carries. Where the other stack is built, its own checkpoint
    # crosses below, which this copy stands in for.
    if other_stack_python() is not None:
        pytest.skip('the other stack writes a real checkpoint (test below)')
    written_here = request.getfixturevalue('written_here')
    numpy_major = 1 if int(np.__version__.split('.')[0]) >= 2 else 2
    checkpoint = toy_cwd / f'numpy{numpy_major}.pth'
    with_numpy_spelling(written_here, checkpoint, numpy_major)
    resume_and_evaluate(toy_cwd, checkpoint, f'numpy{numpy_major}')


def other_stack_python():
    """The interpreter of the other tested stack's environment, if built."""
    here = Path(sys.prefix).resolve()
    for venv in sorted(REPO_ROOT.glob('.venv-*')):
        python = venv / 'bin' / 'python'
        if venv.resolve() != here and built_stack(venv) and python.exists():
            return python
    return None


def test_checkpoint_written_by_the_other_stack(toy_cwd):
    python = other_stack_python()
    if python is None:
        pytest.skip('no other .venv-<stack> environment is built here')
    work_dir = toy_cwd / 'other'
    train(toy_cwd, work_dir, 2, python=str(python))
    resume_and_evaluate(toy_cwd, work_dir / 'iter_2.pth', 'other')
