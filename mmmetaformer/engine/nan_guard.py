"""Stop (or skip) training steps whose loss is not finite.

A diverging run otherwise goes on to the end: the loss turns to nan, every
later checkpoint holds nan weights and ``last_checkpoint`` points at one of
them.
"""

import math

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS

ACTIONS = ('stop', 'skip')


class NonFiniteTrainingError(RuntimeError):
    """Training stopped on a non-finite loss, gradient norm or weight."""


def _all_finite(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@HOOKS.register_module()
class NaNGuardHook(Hook):
    """Stop a run at the first non-finite loss, or skip a few such steps.

    The hook wraps the optimizer wrapper's ``update_params(loss)``, which
    every ``train_step`` of mmengine, mmdet and mmseg calls with the summed
    loss before ``backward``: a non-finite loss is seen before it changes
    any weight. With ``check_grad_norm`` the gradients' total norm is checked
    too, after ``backward`` and before the optimizer step (not under AMP,
    whose loss scaler already skips steps with inf gradients and lowers the
    scale). In a distributed run the ranks agree on the verdict (one
    ``all_reduce`` of a flag), so they all skip or stop together.

    Every checkpoint is checked before it is written: one with a non-finite
    weight is never written, so ``last_checkpoint`` never names one.

    Args:
        action (str): ``'stop'`` raises ``NonFiniteTrainingError``, one line
            naming the iteration and the last good checkpoint. ``'skip'``
            drops the step (no weight changes) with a warning, and stops
            after ``max_skips`` consecutive bad steps, as AMP users expect
            of a loss scaler.
        max_skips (int): consecutive skipped steps tolerated by ``'skip'``.
        check_grad_norm (bool): also check the gradients' total norm.
    """

    priority = 'VERY_HIGH'

    def __init__(self, action='stop', max_skips=10, check_grad_norm=False):
        if action not in ACTIONS:
            raise ValueError(
                f'NaNGuardHook action={action!r}; valid: {", ".join(ACTIONS)}'
            )
        if not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(
                f'NaNGuardHook max_skips={max_skips!r}; valid: an int >= 1'
            )
        self.action = action
        self.max_skips = max_skips
        self.check_grad_norm = check_grad_norm
        self.skipped = 0  # consecutive skipped steps
        self._runner = None
        self._last_good = None

    def before_train(self, runner):
        self._runner = runner
        self._last_good = runner.message_hub.get_info('last_ckpt')
        wrappers = runner.optim_wrapper
        wrappers = (
            wrappers.values()
            if isinstance(wrappers, OptimWrapperDict)
            else [wrappers]
        )
        for wrapper in wrappers:
            self._guard(wrapper)

    def _guard(self, wrapper):
        update_params, step = wrapper.update_params, wrapper.step

        def guarded_update_params(loss, *args, **kwargs):
            if self._bad(
                not bool(torch.isfinite(loss.detach()).all()),
                f'the loss is {loss.item()}',
            ):
                wrapper.zero_grad()
                return None
            self.skipped = 0
            return update_params(loss, *args, **kwargs)

        def guarded_step(*args, **kwargs):
            grads = [
                p.grad
                for group in wrapper.optimizer.param_groups
                for p in group['params']
                if p.grad is not None
            ]
            norm = (
                torch.linalg.vector_norm(
                    torch.stack(
                        [
                            torch.linalg.vector_norm(g.detach().float())
                            for g in grads
                        ]
                    )
                )
                if grads
                else torch.zeros(())
            )
            if self._bad(
                not math.isfinite(norm.item()),
                f'the gradient norm is {norm.item()}',
            ):
                wrapper.zero_grad()
                return None
            return step(*args, **kwargs)

        wrapper.update_params = guarded_update_params
        if self.check_grad_norm and not isinstance(wrapper, AmpOptimWrapper):
            wrapper.step = guarded_step

    def _bad(self, bad_here, what):
        """Whether the step is bad on any rank; raises when it must stop."""
        flag = torch.tensor(float(bad_here))
        all_reduce(flag, op='max')  # no-op without a process group
        if not flag.item():
            return False
        runner = self._runner
        what = what if bad_here else 'not finite on another rank'
        self.skipped += 1
        if self.action == 'skip' and self.skipped <= self.max_skips:
            runner.logger.warning(
                f'NaNGuardHook: skipped iteration {runner.iter + 1}: {what} '
                f'({self.skipped} consecutive of at most {self.max_skips})'
            )
            return True
        after = (
            f' after {self.max_skips} consecutive skipped steps'
            if self.action == 'skip'
            else ''
        )
        last_good = self._last_good or 'none (no checkpoint was saved yet)'
        raise NonFiniteTrainingError(
            f'Training stopped at iteration {runner.iter + 1}{after}: {what}.'
            f' The last good checkpoint is {last_good}; resume from it with '
            f'a lower learning rate or gradient clipping'
        )

    def before_save_checkpoint(self, runner, checkpoint):
        weights = [
            v
            for v in checkpoint.get('state_dict', {}).values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
        ]
        if not _all_finite(weights):
            raise NonFiniteTrainingError(
                f'Training stopped at iteration {checkpoint["meta"]["iter"]}:'
                f' the weights '
                f'hold non-finite values, so no checkpoint was written. The '
                f'last good checkpoint is {self._last_good or "none"}'
            )
        self._last_good = runner.message_hub.get_info('last_ckpt')
