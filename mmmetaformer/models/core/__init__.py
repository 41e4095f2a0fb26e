"""Plain-PyTorch model core: no registry, no config dicts."""
from .convmixer import ConvMixerTrunk, SimplePyramidAdapter
from .layers import (GELU, ChannelsLastMlp, DepthwiseConv2d, DropPath,
                     GroupNorm1, LayerNorm2d, Mlp, PointwiseConv2d, Scale,
                     StarReLU)
from .metaformer import MetaFormerBlock, MetaFormerTrunk, stage_output_sizes
from .mixers import Attention, IdentityMixer, Pooling, RandomMixing, SepConv

__all__ = [
    'Attention', 'ChannelsLastMlp', 'ConvMixerTrunk', 'DepthwiseConv2d',
    'DropPath', 'GELU', 'GroupNorm1', 'IdentityMixer', 'LayerNorm2d',
    'MetaFormerBlock', 'MetaFormerTrunk', 'Mlp', 'PointwiseConv2d', 'Pooling',
    'RandomMixing', 'Scale', 'SepConv', 'SimplePyramidAdapter', 'StarReLU',
    'stage_output_sizes'
]
