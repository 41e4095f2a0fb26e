"""mmmetaformer: the MetaFormer family as mmdet/mmseg backbones.

Importing the package registers every module it defines. The public names
(backbones, StarReLU, the CPU DDP wrapper) go into mmengine's root
registries, so configs scoped to ``mmdet`` and to ``mmseg`` can both build
them; the generic building blocks (token mixers, norms) only into
mmmetaformer's own registry (see ``mmmetaformer/registry.py``).
"""

from . import datasets, engine, models  # noqa: F401  (registers modules)
from .version import __version__

__all__ = ['__version__']
