"""Mixed-precision training without a GPU.

mmengine 0.10.7's ``AmpOptimWrapper`` refuses to build without a GPU (an
assert in ``__init__``), and its ``autocast`` accepts only bf16 on CPU.
``CPUAmpOptimWrapper`` is the same wrapper for CPU training: the forward and
loss run under ``torch.autocast('cpu', dtype)``, with loss scaling by
``torch.amp.GradScaler('cpu')`` for fp16 and none for bf16 (bf16 has fp32's
exponent range, so gradients cannot underflow the way fp16 ones do).

``tools/train.py --amp`` picks ``AmpOptimWrapper`` (fp16) on a GPU and this
wrapper with bf16 on CPU: bf16 has fast CPU kernels wherever oneDNN has
them, while fp16 convolutions on CPUs without fp16 arithmetic fall back to
slow reference kernels. ``dtype='float16'`` works too (every op of the
backbones has an fp16 CPU autocast kernel in torch 2.5).
"""

from contextlib import contextmanager

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for CPU: autocast to ``dtype`` on CPU.

    Args:
        loss_scale (str | float | dict): as ``AmpOptimWrapper``; used for
            fp16 only (bf16 trains unscaled).
        dtype (str | torch.dtype | None): ``'bfloat16'`` (default, also
            for ``None``) or ``'float16'``.
        **kwargs: ``OptimWrapper``'s arguments (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).
    """

    valid_dtypes = ('bfloat16', 'float16')

    def __init__(self, loss_scale='dynamic', dtype='bfloat16', **kwargs):
        # AmpOptimWrapper.__init__ asserts a GPU: set up its state here.
        OptimWrapper.__init__(self, **kwargs)
        if dtype is None:
            dtype = 'bfloat16'
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).replace('torch.', '')
        if dtype not in self.valid_dtypes:
            raise ValueError(
                f'CPUAmpOptimWrapper dtype {dtype!r} is not '
                f'one of {self.valid_dtypes}'
            )
        self.cast_dtype = getattr(torch, dtype)
        scaled = self.cast_dtype == torch.float16
        self._scale_update_param = None
        if loss_scale == 'dynamic':
            scaler_kwargs = {}
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            scaler_kwargs = dict(init_scale=loss_scale)
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
        else:
            raise TypeError(
                'loss_scale must be a float, a dict or '
                f"'dynamic', got {loss_scale!r}"
            )
        # disabled, the scaler passes the loss and the step through as is
        self.loss_scaler = torch.amp.GradScaler(
            'cpu', **dict(scaler_kwargs, enabled=scaled)
        )

    @contextmanager
    def optim_context(self, model):
        with (
            OptimWrapper.optim_context(self, model),
            torch.autocast('cpu', dtype=self.cast_dtype),
        ):
            yield


def amp_optim_wrapper_type():
    """The optimizer wrapper ``--amp`` uses: mmengine's on a GPU, else ours."""
    return (
        'AmpOptimWrapper'
        if torch.cuda.is_available()
        else 'CPUAmpOptimWrapper'
    )
