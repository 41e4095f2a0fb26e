"""Register the core's layers so configs can name them, and build them.

``StarReLU`` is a public name (``act_cfg=dict(type='StarReLU')`` works in
any mmcv, mmdet or mmseg module); the norms, token mixers and ``GELU`` (the
exact GELU in its fastest layout) are what ``MetaFormer`` arch dicts refer
to, registered only in mmmetaformer's own registry (see
``mmmetaformer/registry.py`` for why; elsewhere ``GELU`` stays torch's). A
user's own token mixer registered in ``MODELS`` (any class taking ``dim``
and mapping NCHW to NCHW) plugs in the same way.

The backbones build token mixers and activations with ``MODELS.build``
and norms with ``build_norm``: both look a plain name up in mmmetaformer's
registry first.
"""

from mmcv.cnn import build_norm_layer

from ..registry import MODELS, register_public, scoped_cfg
from .core import (
    GELU,
    Attention,
    GroupNorm1,
    IdentityMixer,
    LayerNorm2d,
    Pooling,
    RandomMixing,
    SepConv,
    StarReLU,
)

register_public(StarReLU)
for _layer in (
    GELU,
    GroupNorm1,
    LayerNorm2d,
    IdentityMixer,
    Pooling,
    SepConv,
    Attention,
    RandomMixing,
):
    MODELS.register_module(module=_layer)


def build_norm(cfg, channels):
    """``cfg`` (e.g. ``dict(type='GN', num_groups=1)``) over ``channels``.

    mmcv's ``build_norm_layer`` (its ``eps`` default, ``requires_grad`` and
    ``GN`` handling), with the type looked up here first.
    """
    return build_norm_layer(scoped_cfg(cfg), channels)[1]
