"""Plain-PyTorch model core: no registry, no config dicts."""

from . import cpu_kernels
from .convmixer import ConvMixerTrunk, SimplePyramidAdapter
from .layers import (
    GELU,
    DepthwiseConv2d,
    DropPath,
    GroupNorm1,
    LayerNorm2d,
    PointwiseConv2d,
    Scale,
    StarReLU,
)
from .metaformer import (
    ChannelsLastMlp,
    MetaFormerBlock,
    MetaFormerTrunk,
    Mlp,
    stage_output_sizes,
)
from .mixers import Attention, IdentityMixer, Pooling, RandomMixing, SepConv

__all__ = [
    'Attention',
    'ChannelsLastMlp',
    'ConvMixerTrunk',
    'DepthwiseConv2d',
    'DropPath',
    'GELU',
    'GroupNorm1',
    'IdentityMixer',
    'LayerNorm2d',
    'MetaFormerBlock',
    'MetaFormerTrunk',
    'Mlp',
    'PointwiseConv2d',
    'Pooling',
    'RandomMixing',
    'Scale',
    'SepConv',
    'SimplePyramidAdapter',
    'StarReLU',
    'cpu_kernels',
    'stage_output_sizes',
]
