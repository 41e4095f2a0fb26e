"""Register the core's layers so configs can name them.

``StarReLU`` works as ``act_cfg=dict(type='StarReLU')`` in any mmcv, mmdet or
mmseg module; the norms and token mixers are what ``MetaFormer`` arch dicts
refer to. A user's own token mixer registered in ``MODELS`` (any class taking
``dim`` and mapping NCHW to NCHW) plugs in the same way.
"""
from ..registry import MODELS
from .core import (Attention, GroupNorm1, IdentityMixer, LayerNorm2d,
                   Pooling, RandomMixing, SepConv, StarReLU)

for _layer in (StarReLU, GroupNorm1, LayerNorm2d, IdentityMixer, Pooling,
               SepConv, Attention, RandomMixing):
    MODELS.register_module(module=_layer)
