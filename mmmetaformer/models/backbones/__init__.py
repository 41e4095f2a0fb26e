from .convmixer import ConvMixer
from .metaformer import (
    FAMILY_CLASSES,
    CAFormer,
    ConvFormer,
    IdentityFormer,
    MetaFormer,
    PoolFormer,
    PoolFormerV2,
    RandFormer,
)

__all__ = [
    'CAFormer',
    'ConvFormer',
    'ConvMixer',
    'FAMILY_CLASSES',
    'IdentityFormer',
    'MetaFormer',
    'PoolFormer',
    'PoolFormerV2',
    'RandFormer',
]
