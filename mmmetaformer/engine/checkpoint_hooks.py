"""Hooks for checkpoints that are never half-written, exact resumes, and
evaluation that refuses weights that did not load.

Every recipe base in ``configs/_base_/`` takes from
``metaformer_runtime.py`` ``AtomicCheckpointHook`` as
``default_hooks.checkpoint`` and ``ExactResumeHook`` in ``custom_hooks``,
so every leaf config gets both in our tools and in
mmdet's and mmseg's own ones. ``tools/test.py`` adds
``StrictLoadHook``. ``atomic_output`` is the one writer of every file the
tools write. They are registered in mmengine's root ``HOOKS``, which
the ``mmdet`` and ``mmseg`` scopes both search (see ``registry.py``).
"""

import contextlib
import glob
import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..checkpoint import CheckpointError, check_model_fits
from ..checkpoint.loading import model_state_dict

PARTIAL_SUFFIX = '.partial'


class OutputWriteError(Exception):
    """A file could not be written (disk full, no permission, a folder in
    the way ...); one line naming the file and why. Nothing partial is
    left and the file's previous content, if any, is unchanged."""


class CheckpointWriteError(OutputWriteError, CheckpointError):
    """A checkpoint could not be written (disk full, no permission ...)."""


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint's weights hold nan or inf."""


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(partial, final):
    """Make ``partial`` (complete, closed) appear as ``final`` in one step.

    Flushed to disk first, then renamed over ``final`` (atomic within a
    directory on POSIX), then the directory entry is flushed: a reader sees
    the old file or the whole new one, never a part.
    """
    _fsync(partial)
    os.replace(partial, final)
    _fsync(osp.dirname(osp.abspath(final)))


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def check_output_file(path, what='output file'):
    """Refuse, before any work, an output path that cannot be a file: an
    existing folder, or one under a folder that does not exist.

    Raises:
        OutputWriteError: one line naming the path and the fix.
    """
    path = str(path)
    if osp.isdir(path):
        raise OutputWriteError(
            f'{what} {path} is a folder; give the path of '
            'a file (in it, or elsewhere)'
        )
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise OutputWriteError(
            f'cannot write {what} {path}: the folder '
            f'{osp.dirname(path) or folder} does not '
            'exist; create it first'
        )


@contextlib.contextmanager
def atomic_output(path):
    """Write the file ``path`` whole or not at all: the one writer of every
    file the tools and hooks write (checkpoints, ``last_checkpoint``,
    converted weights, inference pictures and predictions).

    Yields the temporary path ``path + '.partial'`` (same folder, so the
    final rename is atomic); the body writes the complete file there with
    any writer (``torch.save``, mmengine's ``save_checkpoint``, ``open``).
    On success it is flushed and renamed over ``path`` (``commit_file``):
    readers see the old file or the whole new one. If the body raises, the
    partial file is deleted and ``path`` is left as it was, so writing a
    file over the input it was read from is safe once the input is in
    memory. An ``OSError`` (disk full, ``EFBIG``, no permission, ``path``
    a folder) becomes ``OutputWriteError``, one line.
    """
    path = str(path)
    partial = path + PARTIAL_SUFFIX
    try:
        yield partial
        commit_file(partial, path)
    except OSError as exc:
        _remove_quietly(partial)
        raise OutputWriteError(
            f'Could not write {path}: {exc.strerror or exc} '
            f'({type(exc).__name__}); the partial file was removed and '
            f'{osp.basename(path)} was left as it was'
        ) from exc
    except BaseException:
        _remove_quietly(partial)
        raise


def write_bytes_atomically(path, data):
    with atomic_output(path) as partial, open(partial, 'wb') as f:
        f.write(data)


def write_text_atomically(path, text):
    with atomic_output(path) as partial, open(partial, 'w') as f:
        f.write(text)


def first_nonfinite(state_dict):
    """``(key, count of non-finite values, numel)`` of the first floating or
    complex tensor of ``state_dict`` holding nan or inf, else None."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (
            value.is_floating_point() or value.is_complex()
        ):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                return key, int((~finite).sum()), value.numel()
    return None


def check_finite_weights(checkpoint, name, flag='--allow-nonfinite'):
    """Refuse a loaded checkpoint (a state dict, or a dict with
    ``state_dict``) whose weights hold nan or inf: evaluating it prints
    metrics of a model that computes nothing.

    Raises:
        NonFiniteWeightsError: one line naming the first bad tensor.
    """
    bad = first_nonfinite(model_state_dict(checkpoint, name))
    if bad is not None:
        key, count, numel = bad
        raise NonFiniteWeightsError(
            f'{name}: tensor {key} holds {count} non-finite values (nan or '
            f'inf) of {numel}, the first tensor that does; refusing weights '
            f'that are not numbers (pass {flag} to use them anyway)'
        )


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints are never seen half-written.

    mmengine writes ``epoch_N.pth`` in place, then ``last_checkpoint`` in
    place, and with ``max_keep_ckpts`` deletes the oldest checkpoint
    *before* saving the new one: a kill during a save can leave
    ``last_checkpoint`` naming a truncated file, or a deleted one. On local
    disks this hook writes ``<name>.partial``, flushes and renames it,
    replaces ``last_checkpoint`` the same way, and only then deletes the
    oldest checkpoint; ``.partial`` files a killed run left are deleted when
    training starts. After a kill at any point ``last_checkpoint`` names a
    complete checkpoint (the previous one if the kill came mid-save), and
    ``--resume`` continues from it. A save that fails (disk full, a write
    error) deletes its ``.partial`` file at once and raises
    ``CheckpointWriteError``, one line naming the file, the error and the
    previous checkpoint, which stays intact. Other storage backends keep
    mmengine's behaviour (an object store's put is all or nothing).
    Best-checkpoint saving (``save_best``) is mmengine's own.

    Arguments: those of ``CheckpointHook``.
    """

    def before_train(self, runner):
        super().before_train(runner)
        if self._local() and is_main_process():
            for stale in glob.glob(
                osp.join(glob.escape(self.out_dir), '*' + PARTIAL_SUFFIX)
            ):
                os.remove(stale)
                runner.logger.info(
                    f'Deleted {stale}, a checkpoint a killed '
                    'run did not finish writing'
                )

    def _local(self):
        return isinstance(getattr(self, 'file_backend', None), LocalBackend)

    def _save_checkpoint_with_step(self, runner, step, meta):
        # The one override of a private mmengine method, for a reason
        # mmengine offers no public way around: the order of "delete the
        # oldest checkpoint" and "save the new one" lives only here
        # (CheckpointHook._save_checkpoint_with_step, mmengine 0.10), and
        # with max_keep_ckpts=1 mmengine's order leaves no checkpoint after
        # a kill mid-save. Public alternatives were weighed: a registered
        # file backend (mmengine.fileio.register_backend) makes each write
        # atomic but cannot move the deletion. tests/test_resume.py and
        # tests/test_training_guards.py pin the behaviour, so an mmengine
        # release that changes this method fails there, not silently.
        if not self._local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        # mmengine's bookkeeping, with the deletion of the oldest
        # checkpoint moved after the save.
        outdated = None
        if self.max_keep_ckpts > 0 and not (
            self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step
        ):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info(
                'keep_ckpt_ids', list(self.keep_ckpt_ids)
            )
        ckpt_filename = self.filename_tmpl.format(step)
        previous = runner.message_hub.get_info('last_ckpt')
        self.last_ckpt = self.file_backend.join_path(
            self.out_dir, ckpt_filename
        )
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        save = dict(
            file_client_args=self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():  # mmengine saves on rank 0 only
            runner.save_checkpoint(
                self.out_dir, ckpt_filename + PARTIAL_SUFFIX, **save
            )
            return
        try:
            with atomic_output(self.last_ckpt) as partial:
                runner.save_checkpoint(
                    self.out_dir, osp.basename(partial), **save
                )
            write_text_atomically(
                osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt
            )
        except OutputWriteError as exc:
            runner.message_hub.update_info('last_ckpt', previous)
            cause = exc.__cause__
            raise CheckpointWriteError(
                f'Could not write the checkpoint {self.last_ckpt}: '
                f'{getattr(cause, "strerror", None) or cause} '
                f'({type(cause).__name__}); the partial file was removed and '
                f'the previous checkpoint ({previous or "none yet"}) is '
                'intact'
            ) from cause
        if outdated is not None:
            path = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(outdated)
            )
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed checkpoints
                self.file_backend.rmtree(path)


RESUME_STATE_KEY = 'resume_state'


def capture_random_state():
    """The global random states: python, numpy, torch CPU (and CUDA)."""
    state = dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    # resume maps checkpoints to the training device; RNG states live on CPU
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


def train_sampler(runner):
    """The train loader's index sampler (under any batch sampler)."""
    loader = runner.train_dataloader
    batch_sampler = getattr(loader, 'batch_sampler', None)
    for sampler in (
        getattr(batch_sampler, 'sampler', None),
        getattr(loader, 'sampler', None),
    ):
        if hasattr(sampler, 'seed'):
            return sampler
    return None


class _FetchCounter:
    """Wraps ``IterBasedTrainLoop.dataloader_iterator``: before the n-th
    batch is fetched (n counted from 0, resume's replay included), lets the
    hook restore the random state that belongs to iteration n."""

    def __init__(self, iterator, before_fetch):
        self._iterator = iterator
        self._before_fetch = before_fetch
        self._fetched = 0

    def __iter__(self):
        return self

    def __next__(self):
        self._before_fetch(self._fetched)
        self._fetched += 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Resume a killed training as if it had never stopped.

    mmengine's resume restores the weights, optimizer, parameter schedulers,
    message hub and position, but not the random state: after a resume, data
    augmentation, drop path and the data order draw other numbers than the
    run would have. This hook stores in every checkpoint (key
    ``resume_state``) the global random states of python, numpy and torch
    (CPU and CUDA) at the moment of saving, and the train sampler's seed (a
    run without ``randomness.seed`` draws a new one). It then makes the
    random state at the first batch fetched after a checkpoint equal the
    stored one, in the uninterrupted run and in a resumed one alike:

    * epoch-based loops: at ``before_train_epoch``, before the epoch's data
      iterator exists (this hook runs last there, priority ``LOWEST``);
    * iteration-based loops: right before the batch of the checkpoint's
      iteration is fetched. mmengine's resume first replays the data loader
      over the iterations already done (drawing random numbers for their
      augmentations), so the hook wraps the loop's data iterator to restore
      after that replay.

    Whatever runs between a save and the next fetch (validation, logging)
    therefore never changes the run's random draws, and with deterministic
    ops every loss after ``--resume`` equals the uninterrupted run's, bit
    for bit (``tests/test_resume.py``, on CPU).

    Limits:

    * an epoch-based loop resumes exactly from checkpoints saved at the end
      of an epoch (mmengine restarts an epoch from its first batch; a resume
      from a mid-epoch checkpoint warns);
    * with several processes each rank has its own random state and only
      rank 0 saves, so the hook stores nothing there and the run resumes as
      mmengine does;
    * data-loader workers draw from mmengine's worker seeding (seed, rank,
      worker id), which a resume replays, except with
      ``persistent_workers=True`` in an epoch-based loop; and workers (and
      an iteration-based loop's sampler, which workers start at once) are
      seeded before the checkpoint is read, so runs with workers need a
      fixed ``randomness.seed`` to resume exactly.
    """

    priority = 'LOWEST'

    def __init__(self):
        self._loaded = None  # the state in the checkpoint last loaded
        self._pending = None  # the state to restore at its position

    def _active(self):
        return get_world_size() == 1

    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded = checkpoint.get(RESUME_STATE_KEY)

    def before_train(self, runner):
        loaded, self._loaded = self._loaded, None
        resumed = runner.iter > 0
        if not self._active():
            runner.logger.info(
                'ExactResumeHook: several processes, so '
                'random states are not saved or restored'
            )
            return
        loop = runner.train_loop
        iter_based = hasattr(loop, 'dataloader_iterator')
        if resumed and loaded is None:
            runner.logger.warning(
                'The resumed checkpoint holds no random state (saved without '
                'ExactResumeHook): the run continues with other random '
                'draws than an uninterrupted one'
            )
        elif loaded is not None and (loaded['epoch'], loaded['iter']) == (
            runner.epoch,
            runner.iter,
        ):  # a resume, not load_from
            sampler = train_sampler(runner)
            if sampler is not None and loaded.get('sampler_seed') is not None:
                sampler.seed = loaded['sampler_seed']
            self._pending = loaded
            if not iter_based and runner.iter != runner.epoch * len(
                runner.train_dataloader
            ):
                runner.logger.warning(
                    'The resumed checkpoint was saved in the middle of an '
                    'epoch; the epoch-based loop restarts the epoch from its '
                    'first batch, so the run is not the uninterrupted one'
                )
        if iter_based:
            loop.dataloader_iterator = _FetchCounter(
                loop.dataloader_iterator,
                lambda fetched: self._restore_at(('fetch', fetched)),
            )

    def before_train_epoch(self, runner):
        if self._active() and not hasattr(
            runner.train_loop, 'dataloader_iterator'
        ):
            self._restore_at(('epoch', runner.epoch, runner.iter))

    def _restore_at(self, position):
        if self._pending is not None and self._pending['at'] == position:
            restore_random_state(self._pending['random'])
            self._pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        if not self._active():
            return
        meta = checkpoint['meta']
        if hasattr(runner.train_loop, 'dataloader_iterator'):
            # the batch of iteration meta['iter'] is the loop's next fetch
            at = ('fetch', meta['iter'])
        else:
            at = ('epoch', meta['epoch'], meta['iter'])
        state = dict(
            epoch=meta['epoch'],
            iter=meta['iter'],
            at=at,
            random=capture_random_state(),
            sampler_seed=getattr(train_sampler(runner), 'seed', None),
        )
        checkpoint[RESUME_STATE_KEY] = state
        self._pending = state


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Refuse a loaded checkpoint that does not fit the model exactly.

    mmengine loads ``load_from`` with ``strict=False`` and only logs missing
    or unexpected keys, so evaluating the wrong file prints metrics of
    random weights. Before the weights are copied, this hook raises
    ``CheckpointMismatchError`` (counts and first names) unless the
    checkpoint holds exactly the model's tensors, shapes included (see
    ``mmmetaformer.checkpoint.check_model_fits`` for the harmless
    exceptions). ``tools/test.py`` adds it; add it to ``custom_hooks`` to get
    the same in mmdet's or mmseg's own test tool. Not for fine-tuning, where
    a head that does not match is expected.

    Weights holding nan or inf are refused too (``NonFiniteWeightsError``,
    naming the first such tensor) unless ``allow_nonfinite=True``.
    """

    priority = 'HIGHEST'  # before any hook changes the checkpoint

    def __init__(self, allow_nonfinite=False):
        self.allow_nonfinite = allow_nonfinite

    def after_load_checkpoint(self, runner, checkpoint):
        model = (
            runner.model.module
            if is_model_wrapper(runner.model)
            else runner.model
        )
        name = runner.cfg.get('load_from') or 'the checkpoint'
        check_model_fits(model, checkpoint, name)
        if not self.allow_nonfinite:
            check_finite_weights(checkpoint, name)
        print_log(
            "The checkpoint holds exactly the model's tensors",
            logger='current',
        )
