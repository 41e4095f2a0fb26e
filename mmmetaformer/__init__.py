"""mmmetaformer: the MetaFormer family as mmdet/mmseg backbones.

Importing the package registers every module it defines. The public names
(backbones, StarReLU, the CPU DDP wrapper) go into mmengine's root
registries, so configs scoped to ``mmdet`` and to ``mmseg`` can both build
them; the generic building blocks (token mixers, norms) only into
mmmetaformer's own registry (see ``mmmetaformer/registry.py``).
"""

import warnings

from .version import __version__


def _hide_import_time_notice(show):
    """``warnings.showwarning`` without one notice: mmengine 0.10 imports
    torch's TorchScript functional optimizers, which torch 2.5 deprecates
    with a warning it forces to show at import (its own ``always`` filter,
    so a filter here cannot hide it). Nothing for a user to act on, and it
    would be the first line of every tool's output."""

    def filtered(message, category, *args, **kwargs):
        if not str(message).startswith(
            '`TorchScript` support for functional optimizers'
        ):
            show(message, category, *args, **kwargs)

    return filtered


with warnings.catch_warnings():  # restores showwarning afterwards
    warnings.showwarning = _hide_import_time_notice(warnings.showwarning)
    from . import datasets, engine, models  # noqa: F401  (registers modules)

__all__ = ['__version__']
