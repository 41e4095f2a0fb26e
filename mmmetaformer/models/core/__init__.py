"""Plain-PyTorch model core: no registry, no config dicts."""
from .convmixer import ConvMixerTrunk, SimplePyramidAdapter
from .layers import (GELU, ChannelsLastMlp, DropPath, GroupNorm1, LayerNorm2d,
                     Mlp, Scale, StarReLU)
from .metaformer import MetaFormerBlock, MetaFormerTrunk, stage_output_sizes
from .mixers import Attention, IdentityMixer, Pooling, RandomMixing, SepConv

__all__ = [
    'Attention', 'ChannelsLastMlp', 'ConvMixerTrunk', 'DropPath', 'GELU',
    'GroupNorm1', 'IdentityMixer', 'LayerNorm2d', 'MetaFormerBlock',
    'MetaFormerTrunk', 'Mlp', 'Pooling', 'RandomMixing', 'Scale', 'SepConv',
    'SimplePyramidAdapter', 'StarReLU', 'stage_output_sizes'
]
