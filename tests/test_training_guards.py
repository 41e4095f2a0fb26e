"""A diverging run stops (or skips steps) and never saves nan weights; a
failed checkpoint write is one line and leaves the previous one intact.

The runs are mmengine Runners of a one-weight model trained on a list of
inputs ``x``: the loss is ``sqrt(w * x)``. ``x = nan`` makes the loss nan;
``x = 0`` keeps it finite (0) with a nan gradient. The last two tests go
through ``tools/train.py`` on the toy segmentation config.
"""

import math
import resource
import signal

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mmmetaformer  # noqa: F401  (registers the hooks)
from mmmetaformer.checkpoint import read_checkpoint
from mmmetaformer.engine import CheckpointWriteError, NonFiniteTrainingError
from mmmetaformer.engine.nan_guard import NaNGuardHook


class SqrtModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        # ballast, so that a checkpoint is some 70 kB
        self.ballast = nn.Linear(128, 128)

    def forward(self, inputs, mode='tensor'):
        loss = torch.sqrt(self.w * inputs).mean()
        return dict(loss=loss) if mode == 'loss' else loss


class Inputs(torch.utils.data.Dataset):
    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def __getitem__(self, index):
        return dict(inputs=torch.tensor([self.values[index]]))


class RecordWeight(Hook):
    """Records ``w`` after every iteration."""

    def __init__(self):
        self.weights = []

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        self.weights.append(runner.model.w.item())


def sqrt_runner(work_dir, values, guard, *hooks):
    return Runner(
        model=SqrtModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Inputs(values),
            batch_size=1,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=len(values)),
        default_hooks=dict(
            checkpoint=dict(
                type='AtomicCheckpointHook', interval=2, by_epoch=False
            )
        ),
        custom_hooks=[guard, *hooks],
        default_scope='mmengine',
        experiment_name=f'guard_{work_dir.name}',
    )


def last_checkpoint(work_dir):
    return (work_dir / 'last_checkpoint').read_text()


def assert_finite(path):
    weights = read_checkpoint(path)['state_dict'].values()
    assert all(torch.isfinite(w).all() for w in weights), path


def test_a_nan_loss_stops_the_run_before_it_changes_a_weight(tmp_path):
    record = RecordWeight()
    runner = sqrt_runner(
        tmp_path, [1, 1, 1, 1, math.nan, 1], dict(type='NaNGuardHook'), record
    )
    with pytest.raises(NonFiniteTrainingError) as err:
        runner.train()
    good = str(tmp_path / 'iter_4.pth')
    assert str(err.value) == (
        f'Training stopped at iteration 5: the loss is nan. The last good '
        f'checkpoint is {good}; resume from it with a lower learning rate '
        f'or gradient clipping'
    )
    assert last_checkpoint(tmp_path) == good
    assert_finite(good)
    assert not (tmp_path / 'iter_6.pth').exists()
    assert math.isfinite(runner.model.w.item()) and len(record.weights) == 4


def test_skip_drops_bad_steps_and_stops_after_max_skips(tmp_path):
    record = RecordWeight()
    runner = sqrt_runner(
        tmp_path / 'skip',
        [1, 1, math.nan, 1, 1, 1],
        dict(type='NaNGuardHook', action='skip'),
        record,
    )
    runner.train()
    # iteration 3 was skipped: w did not move
    assert record.weights[2] == record.weights[1] != record.weights[3]
    assert last_checkpoint(tmp_path / 'skip') == str(
        tmp_path / 'skip' / 'iter_6.pth'
    )
    runner = sqrt_runner(
        tmp_path / 'stop',
        [1, 1, math.nan, math.nan, 1],
        dict(type='NaNGuardHook', action='skip', max_skips=1),
    )
    with pytest.raises(
        NonFiniteTrainingError,
        match='^Training stopped at iteration 4 after 1 '
        'consecutive skipped steps: the loss is nan. The last'
        f' good checkpoint is {tmp_path / "stop"}/iter_2.pth',
    ):
        runner.train()


def test_a_nan_gradient_stops_the_run_with_check_grad_norm(tmp_path):
    runner = sqrt_runner(
        tmp_path, [1, 0, 1, 1], dict(type='NaNGuardHook', check_grad_norm=True)
    )
    with pytest.raises(
        NonFiniteTrainingError,
        match='^Training stopped at iteration 2: the gradient '
        'norm is nan. The last good checkpoint is none',
    ):
        runner.train()


def test_nan_weights_are_never_saved(tmp_path):
    """Without the gradient check, a finite loss with a nan gradient makes
    the weights nan; the next save is refused and nothing names it."""
    runner = sqrt_runner(tmp_path, [1, 1, 1, 0], dict(type='NaNGuardHook'))
    with pytest.raises(
        NonFiniteTrainingError,
        match='^Training stopped at iteration 4: the weights '
        'hold non-finite values, so no checkpoint was '
        f'written. The last good checkpoint is {tmp_path}/'
        'iter_2.pth',
    ):
        runner.train()
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    assert sorted(p.name for p in tmp_path.glob('iter_*')) == ['iter_2.pth']


def test_invalid_options_name_the_choices():
    with pytest.raises(ValueError, match="action='halt'; valid: stop, skip"):
        NaNGuardHook(action='halt')
    with pytest.raises(ValueError, match='max_skips=0; valid: an int >= 1'):
        NaNGuardHook(max_skips=0)


class LimitFileSize(Hook):
    """From the second save on, files may not grow past ``limit`` bytes
    (``RLIMIT_FSIZE``: a write beyond fails with EFBIG, as on a full disk
    it fails with ENOSPC)."""

    priority = 'VERY_LOW'

    def __init__(self, limit):
        self.limit, self.saves = limit, 0

    def before_save_checkpoint(self, runner, checkpoint):
        self.saves += 1
        if self.saves == 2:
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY)
            )


def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path,
):
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    runner = sqrt_runner(
        tmp_path,
        [1, 1, 1, 1],
        dict(type='NaNGuardHook'),
        LimitFileSize(20_000),
    )
    try:
        with pytest.raises(CheckpointWriteError) as err:
            runner.train()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    good = tmp_path / 'iter_2.pth'
    assert str(err.value) == (
        f'Could not write the checkpoint {tmp_path}/iter_4.pth: File too '
        f'large (OSError); the partial file was removed and the previous '
        f'checkpoint ({good}) is intact'
    )
    assert sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith('iter_')
    ) == ['iter_2.pth']
    assert last_checkpoint(tmp_path) == str(good)
    assert_finite(good)


def train_toy_segmentation_until_it_fails(tmp_path, *options, preexec_fn=None):
    """Run tools/train.py on the toy segmentation config (two 64 px scenes,
    a checkpoint every iteration) with ``options``; it must exit 2 with one
    ``error:`` line and no traceback. Returns the work dir and that line."""
    import subprocess
    import sys

    from mmmetaformer_tools.toy import make_ade20k

    from .helpers import REPO_ROOT

    make_ade20k(
        tmp_path / 'data' / 'toy_ade20k',
        num_train=2,
        num_val=1,
        img_size=64,
        seed=0,
    )
    work_dir = tmp_path / 'run'
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / 'tools' / 'train.py'),
            str(
                REPO_ROOT
                / 'configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py'
            ),
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            'train_dataloader.batch_size=1',
            'train_dataloader.dataset.indices=2',
            'val_dataloader.dataset.indices=1',
            'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=1',
            *options,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec_fn,
    )
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [
        line for line in proc.stderr.splitlines() if line.startswith('error:')
    ]
    assert len(errors) == 1, proc.stderr[-3000:]
    return work_dir, errors[0]


def test_a_diverging_run_through_the_train_tool_is_one_line(tmp_path):
    """tools/train.py made to diverge at once (a zero std turns the
    normalised image into inf): exit 2, one line naming the iteration, and
    no checkpoint written."""
    work_dir, error = train_toy_segmentation_until_it_fails(
        tmp_path,
        'model.data_preprocessor.std=[0.0,0.0,0.0]',
        'train_cfg.max_iters=2',
    )
    assert error.startswith('error: Training stopped at iteration 1')
    assert 'nan' in error or 'inf' in error or 'non-finite' in error
    assert not list(work_dir.glob('*.pth'))
    assert not (work_dir / 'last_checkpoint').exists()


def test_a_failed_save_through_the_train_tool_is_one_line(tmp_path):
    """tools/train.py whose checkpoint cannot be written (a 10 MB file-size
    limit, as a full disk: the write fails with an OSError): exit 2, one
    line naming the file, and no partial file left behind."""
    limit = 10 * 2**20

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    work_dir, error = train_toy_segmentation_until_it_fails(
        tmp_path, 'train_cfg.max_iters=1', preexec_fn=limit_file_size
    )
    assert str(work_dir / 'iter_1.pth') in error
    assert not list(work_dir.glob('*.partial'))
    assert not list(work_dir.glob('*.pth'))
