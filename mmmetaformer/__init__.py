"""mmmetaformer: the MetaFormer family as mmdet/mmseg backbones.

Importing the package registers every module it defines (backbones, token
mixers, StarReLU, the CPU DDP wrapper) in mmengine's root registries, so
configs scoped to ``mmdet`` and to ``mmseg`` can both build them.
"""
from .version import __version__
from . import engine, models  # noqa: F401  (registers modules)

__all__ = ['__version__']
