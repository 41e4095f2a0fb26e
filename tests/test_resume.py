"""A training killed with SIGKILL resumes exactly; saves are atomic.

For the toy detection config (epoch-based loop) and the toy segmentation
config (iteration-based loop), cut to a few iterations at 128 px on CPU with
deterministic settings: an uninterrupted reference run and a run that is
SIGKILLed run side by side, then the killed run continues with
``tools/train.py --resume`` (auto). Every loss logged after the resume must
equal the reference's bit for bit (``log_processor.window_size=1``, so each
logged loss is that iteration's own), although validation ran between the
last save and the next iteration in the reference only. The segmentation
run is killed while it writes a checkpoint, with ``max_keep_ckpts=1``: its
``.partial`` file is a named pipe the test reads from, so the save is
caught mid-write whatever its size and the disk's speed. The runs are
forked from one process that imported the stack once (``forked_tools``),
with a one-block-per-stage backbone and narrow heads (what is checked is
the resume, not the width).
"""

import errno
import json
import os
import signal
import time
from pathlib import Path

from mmmetaformer_tools.toy import make_ade20k, make_coco

import pytest

from mmmetaformer.checkpoint import read_checkpoint

from .forked_tools import ForkedTool
from .helpers import tiny_config

# Every iteration draws random numbers: augmentation (python/numpy) and
# drop path (torch), so a resume that does not restore them gives other
# losses (measured: without ExactResumeHook they differ after the resume).
EXACT = [
    'randomness.deterministic=True',
    'default_hooks.logger.interval=1',
    'log_processor.window_size=1',
    'model.backbone.drop_path_rate=0.1',
]
# 2 images at 128 px, batch 1: 2 iterations per epoch, validation on one
# image after each epoch (it runs between a save and the next epoch).
DET_RUN = EXACT + [
    'train_dataloader.batch_size=1',
    'train_dataloader.dataset.indices=2',
    'train_dataloader.dataset.pipeline.2.scale=(128,128)',
    'val_dataloader.dataset.indices=1',
    'val_dataloader.dataset.pipeline.1.scale=(128,128)',
    'train_cfg.max_epochs=2',
    'default_hooks.checkpoint.interval=1',
]
# 4 iterations of 2 random 128x128 crops, a checkpoint every 2 iterations
# (only the newest kept) followed by validation on one image.
SEG_RUN = EXACT + [
    'train_dataloader.batch_size=2',
    'train_dataloader.dataset.indices=4',
    'val_dataloader.dataset.indices=1',
    'train_cfg.max_iters=4',
    'train_cfg.val_interval=2',
    'default_hooks.checkpoint.interval=2',
    'default_hooks.checkpoint.max_keep_ckpts=1',
]


@pytest.fixture(scope='module')
def toy_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('resume')
    make_coco(
        cwd / 'data' / 'toy_coco',
        num_train=2,
        num_val=1,
        img_size=128,
        seed=0,
        max_objects=3,
    )
    make_ade20k(
        cwd / 'data' / 'toy_ade20k',
        num_train=4,
        num_val=1,
        img_size=128,
        seed=0,
    )
    tiny_config(cwd, 'retinanet')  # cwd/retinanet_tiny_toy_coco.py
    tiny_config(cwd, 'semantic_fpn')  # cwd/semantic_fpn_tiny_toy_ade20k.py
    return cwd


def start_training(cwd, config, work_dir, options, *extra):
    log = Path(cwd) / f'{Path(work_dir).name}_{len(extra)}.log'
    return ForkedTool(
        'train.py',
        config,
        '--work-dir',
        work_dir,
        *extra,
        '--cfg-options',
        *options,
        cwd=cwd,
        log_path=log,
    )


def finish(run, timeout=900):
    result = run.wait(timeout)
    assert result.returncode == 0, result.output[-5000:]
    return result.output


def kill_when(run, ready, what, timeout=900):
    """SIGKILL ``run`` as soon as ``ready()`` is true (polled every ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not run.running() or time.monotonic() > deadline:
            run.kill()
            pytest.fail(f'the run ended before {what}: {run.output()[-3000:]}')
        time.sleep(0.001)
    run.kill()
    assert run.process.exitcode == -signal.SIGKILL


def losses(work_dir, newest_only=False):
    """``{iteration: {loss name: value}}`` from the runs' scalars.json."""
    logs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    assert logs, f'no scalars.json under {work_dir}'
    result = {}
    for log in logs[-1:] if newest_only else logs:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                result[record['step']] = {
                    k: v for k, v in record.items() if k.startswith('loss')
                }
    return result


def resumed_losses_equal_reference(resumed, reference, resumed_at, last):
    assert sorted(resumed) == list(range(resumed_at + 1, last + 1))
    for step, values in resumed.items():
        assert values == reference[step], (step, values, reference[step])


@pytest.fixture(scope='module')
def det_runs(toy_cwd):
    """(reference dir, killed-and-resumed dir, resume log, resumed iter)."""
    reference, killed = toy_cwd / 'det_reference', toy_cwd / 'det_killed'
    config = toy_cwd / 'retinanet_tiny_toy_coco.py'
    ref_proc = start_training(toy_cwd, config, reference, DET_RUN)
    proc = start_training(toy_cwd, config, killed, DET_RUN)
    # Killed right after its first checkpoint is complete, wherever it is.
    kill_when(
        proc, (killed / 'last_checkpoint').exists, 'the first checkpoint'
    )
    finish(ref_proc)
    resumed_from = (killed / 'last_checkpoint').read_text().strip()
    resumed_iter = read_checkpoint(resumed_from)['meta']['iter']
    out = finish(start_training(toy_cwd, config, killed, DET_RUN, '--resume'))
    return reference, killed, out, resumed_from, resumed_iter


def test_detection_resumes_bit_exactly_after_sigkill(det_runs):
    reference, killed, out, resumed_from, resumed_iter = det_runs
    assert resumed_from.endswith('epoch_1.pth') and resumed_iter == 2
    assert 'resumed epoch: 1, iter: 2' in out
    resumed_losses_equal_reference(
        losses(killed, newest_only=True), losses(reference), resumed_iter, 4
    )


class SaveInFlight:
    """``ready()`` once ``run`` is writing the checkpoint ``partial``.

    After the run's first checkpoint (its start-up deletes stale
    ``.partial`` files), ``partial`` becomes a named pipe: the next save
    opens it as its ``.partial`` file and blocks writing into it until the
    test reads, and ``ready()`` is true once its first bytes arrive. The
    run is then killed inside the save, before the file could be complete.
    """

    def __init__(self, first_checkpoint, partial):
        self.first_checkpoint, self.partial = first_checkpoint, partial
        self.fd = None

    def __call__(self):
        if self.fd is None:
            if not self.first_checkpoint.exists():
                return False
            os.mkfifo(self.partial)
            self.fd = os.open(self.partial, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return bool(os.read(self.fd, 1 << 16))
        except OSError as exc:  # the writer has not written yet
            if exc.errno != errno.EAGAIN:
                raise
            return False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)


@pytest.fixture(scope='module')
def seg_runs(toy_cwd):
    reference, killed = toy_cwd / 'seg_reference', toy_cwd / 'seg_killed'
    config = toy_cwd / 'semantic_fpn_tiny_toy_ade20k.py'
    ref_proc = start_training(toy_cwd, config, reference, SEG_RUN)
    proc = start_training(toy_cwd, config, killed, SEG_RUN)
    partial = killed / 'iter_4.pth.partial'
    in_flight = SaveInFlight(killed / 'iter_2.pth', partial)
    try:
        kill_when(proc, in_flight, 'the second checkpoint was written')
    finally:
        in_flight.close()
    finish(ref_proc)
    after_kill = dict(
        partial=partial.exists(),
        files=sorted(p.name for p in killed.glob('iter_*')),
        last=(killed / 'last_checkpoint').read_text().strip(),
    )
    out = finish(start_training(toy_cwd, config, killed, SEG_RUN, '--resume'))
    return reference, killed, out, after_kill


def test_segmentation_killed_during_a_save_resumes_bit_exactly(seg_runs):
    reference, killed, out, after_kill = seg_runs
    # Killed mid-save: the new file never became iter_4.pth, the previous
    # checkpoint was kept (max_keep_ckpts=1 deletes it only after the new
    # one is complete) and last_checkpoint still names it.
    assert after_kill['partial']
    assert after_kill['files'] == ['iter_2.pth', 'iter_4.pth.partial']
    assert after_kill['last'] == str(killed / 'iter_2.pth')
    assert 'resumed epoch: 0, iter: 2' in out
    assert (
        'iter_4.pth.partial, a checkpoint a killed run did not finish' in out
    )
    resumed_losses_equal_reference(
        losses(killed, newest_only=True), losses(reference), 2, 4
    )
    assert sorted(p.name for p in killed.glob('iter_*')) == ['iter_4.pth']
