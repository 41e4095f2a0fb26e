"""Arch dicts: strides follow the stage index; bad values are named."""

import pytest
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401  (registers the backbones)
from mmmetaformer.models.archs import FAMILIES
from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
from mmmetaformer.models.core.metaformer import stage_output_sizes
from mmmetaformer.registry import MODELS

METAFORMER_FAMILIES = sorted(FAMILIES)


@pytest.mark.parametrize('family', METAFORMER_FAMILIES)
def test_equal_consecutive_dims_keep_the_claimed_strides(family):
    """dims [64, 64, 128, 128] used to skip stages 1 and 3's downsampling
    (stride 4, 4, 8, 8 while out_strides said 4, 8, 16, 32)."""
    dims = [64, 64, 128, 128]
    model = MODELS.build(
        dict(
            type=FAMILY_CLASSES[family],
            arch=dict(depths=[1, 1, 1, 1], dims=dims),
        )
    ).eval()
    assert model.out_strides == (4, 8, 16, 32)
    height, width = 129, 96
    with torch.no_grad():
        outs = model(torch.randn(1, 3, height, width))
    for out, dim, size in zip(outs, dims, stage_output_sizes(height, width)):
        assert tuple(out.shape[1:]) == (dim, *size)
    assert isinstance(model.stages[0].downsample, nn.Identity)
    for stage in model.stages[1:]:
        assert stage.downsample.conv.stride == (2, 2)
    assert [info['reduction'] for info in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize(
    'key,value,named',
    [
        ('depths', [2, 0, 6, 2], r'depths\[1\]=0'),
        ('depths', [2, 2, -1, 2], r'depths\[2\]=-1'),
        ('dims', [64, 128, 0, 512], r'dims\[2\]=0'),
        ('dims', [64, 128.5, 320, 512], r'dims\[1\]=128\.5'),
    ],
)
def test_non_positive_depths_and_dims_are_named(key, value, named):
    arch = dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512])
    arch[key] = value
    with pytest.raises(ValueError, match=named + '.*positive int'):
        MODELS.build(dict(type='PoolFormer', arch=arch))


def test_attention_head_size_that_does_not_divide_the_dim():
    mixer = dict(type='Attention', head_dim=48)  # 320 / 48 is not whole
    arch = dict(
        token_mixer_cfg=[
            dict(type='SepConv'),
            dict(type='SepConv'),
            mixer,
            mixer,
        ]
    )
    with pytest.raises(ValueError) as err:
        MODELS.build(
            dict(
                type='CAFormer',
                arch=dict(arch, depths=[1, 1, 1, 1], dims=[64, 128, 320, 512]),
            )
        )
    message = str(err.value)
    assert 'token_mixer_cfg[2]' in message and "'head_dim': 48" in message
    assert 'dim 320' in message and 'not divisible' in message


@pytest.mark.parametrize(
    'mixer,named',
    [
        (dict(type='NoSuchMixer'), 'NoSuchMixer'),
        (dict(type='Pooling', pool_sz=3), 'pool_sz'),
    ],
)
def test_token_mixer_that_cannot_build_is_named(mixer, named):
    with pytest.raises(ValueError) as err:
        MODELS.build(
            dict(
                type='MetaFormer',
                arch=dict(
                    depths=[1, 1, 1, 1],
                    dims=[64, 128, 320, 512],
                    token_mixer_cfg=mixer,
                    norm_cfg=dict(type='GroupNorm1'),
                ),
            )
        )
    message = str(err.value)
    assert 'MetaFormer arch token_mixer_cfg=' in message
    assert named in message and 'dim 64' in message
