"""MetaFormerLayerDecayConstructor: lr and weight decay of every parameter.

The constructor takes layers from the backbone's structure; these tests
recompute every parameter's layer by hand from its name (the timm layout:
``stem``, ``stages.i.downsample``, ``stages.i.blocks.j``; ConvMixer's
``stem`` and ``blocks.j``) and check each parameter's group lr and weight
decay against ``lr * decay_rate ** (num_layers + 1 - layer)`` and the
no-decay-on-1-D rule, for every family and both decay types, inside a real
mmseg segmentor (FPN neck + FPN head: the top rate). Small archs keep it
cheap: S12/S18 and an 8-layer ConvMixer.
"""

import copy
import math
import re

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope

import mmmetaformer  # noqa: F401
from mmmetaformer.engine import MetaFormerLayerDecayConstructor
from mmmetaformer.engine.cpu import sync_bn_to_bn
from mmmetaformer.models.archs import METAFORMER_ARCHS
from mmmetaformer.models.backbones import FAMILY_CLASSES

LR, WD = 1e-3, 0.05
CONVMIXER_TOY = dict(
    dim=128, depth=8, kernel_size=3, patch_size=7, act_cfg=dict(type='GELU')
)
# family -> (backbone config, depths for the hand computation)
BACKBONES = {
    family: (
        dict(type=FAMILY_CLASSES[family], arch=size),
        METAFORMER_ARCHS[family][size]['depths'],
    )
    for family, size in [
        ('poolformer', 's12'),
        ('poolformerv2', 's12'),
        ('identityformer', 's12'),
        ('randformer', 's12'),
        ('convformer', 's18'),
        ('caformer', 's18'),
    ]
}
BACKBONES['convmixer'] = (dict(type='ConvMixer', arch=CONVMIXER_TOY), None)


def segmentor(backbone_cfg):
    """A real mmseg EncoderDecoder: backbone + FPN + FPNHead."""
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    torch.manual_seed(0)
    with torch.device('meta'):  # groups need parameters, not values
        backbone = MODELS.build(copy.deepcopy(backbone_cfg))
    cfg = dict(
        type='EncoderDecoder',
        backbone=backbone_cfg,
        neck=dict(
            type='FPN',
            in_channels=list(backbone.out_channels),
            out_channels=32,
            num_outs=len(backbone.out_channels),
        ),
        decode_head=dict(
            type='FPNHead',
            in_channels=[32] * len(backbone.out_channels),
            in_index=list(range(len(backbone.out_channels))),
            feature_strides=[4, 8, 16, 32][: len(backbone.out_channels)],
            channels=16,
            num_classes=5,
            norm_cfg=dict(type='SyncBN'),
        ),
    )
    sync_bn_to_bn(cfg)
    with torch.device('meta'):
        return MODELS.build(cfg)


def hand_layer(name, depths, decay_type, head_layer):
    """The layer of parameter ``name`` by the rule, from its name alone."""
    if name.startswith('backbone.stem.'):
        return 0
    if depths is None:  # ConvMixer: blocks.j; stages are groups of blocks
        match = re.match(r'backbone\.blocks\.(\d+)\.', name)
        if not match:
            return head_layer  # adapter, output norms, neck, head
        block = int(match.group(1))
        if decay_type == 'layer_wise':
            return block + 1
        return block // math.ceil(CONVMIXER_TOY['depth'] / 4) + 1
    match = re.match(
        r'backbone\.stages\.(\d+)\.(downsample|blocks\.(\d+))\.', name
    )
    if not match:
        return head_layer  # output norms, neck, head
    stage = int(match.group(1))
    if decay_type == 'stage_wise':
        return stage + 1
    block = 0 if match.group(2) == 'downsample' else int(match.group(3))
    return 1 + sum(depths[:stage]) + block


def backbone_top(depths, decay_type):
    if decay_type == 'stage_wise':
        return 4
    return CONVMIXER_TOY['depth'] if depths is None else sum(depths)


def build(model, **paramwise):
    return build_optim_wrapper(
        model,
        dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
            constructor='MetaFormerLayerDecayConstructor',
            paramwise_cfg=paramwise,
        ),
    )


def check_every_parameter(
    model, optim_wrapper, depths, decay_type, decay_rate, num_layers
):
    head_layer = num_layers + 1
    group_of = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            assert id(param) not in group_of, 'parameter in two groups'
            group_of[id(param)] = group
    trainable = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    ]
    assert len(group_of) == len(trainable)  # every one, frozen ones not
    layers_seen = set()
    for name, param in trainable:
        group = group_of[id(param)]
        layer = hand_layer(name, depths, decay_type, head_layer)
        layers_seen.add(layer)
        expected_lr = LR * decay_rate ** (head_layer - layer)
        assert group['lr'] == pytest.approx(expected_lr, rel=1e-12), name
        assert group['layer_id'] == layer, name
        expected_wd = WD if param.ndim > 1 else 0.0
        assert group['weight_decay'] == expected_wd, name
    return layers_seen


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
@pytest.mark.parametrize('family', list(BACKBONES))
def test_lr_and_weight_decay_of_every_parameter(family, decay_type):
    backbone_cfg, depths = BACKBONES[family]
    model = segmentor(backbone_cfg)
    wrapper = build(model, decay_rate=0.8, decay_type=decay_type)
    top = backbone_top(depths, decay_type)
    layers = check_every_parameter(
        model, wrapper, depths, decay_type, 0.8, num_layers=top
    )
    # Every layer has parameters: stem 0, 1..top, heads top + 1.
    assert layers == set(range(top + 2))
    # The two ends: heads at the base lr, the stem at rate ** (top + 1).
    lrs = {g['layer_id']: g['lr'] for g in wrapper.optimizer.param_groups}
    assert lrs[top + 1] == LR
    assert lrs[0] == pytest.approx(LR * 0.8 ** (top + 1))


def test_groups_split_by_layer_and_decay():
    model = segmentor(BACKBONES['convformer'][0])
    groups = build(model, decay_rate=0.9).optimizer.param_groups
    names = [g['group_name'] for g in groups]
    assert len(names) == len(set(names))
    # 18 blocks: layers 0..19, each with weights and 1-D parameters.
    assert names[:4] == [
        'layer_0_decay',
        'layer_0_no_decay',
        'layer_1_decay',
        'layer_1_no_decay',
    ]
    assert len(groups) == 2 * 20
    assert all(g['lr_scale'] == pytest.approx(g['lr'] / LR) for g in groups)


def test_larger_num_layers_leaves_a_gap_like_convnext_stage_wise():
    """mmseg's ConvNeXt UperNet: stage_wise over 4 stages, num_layers=12:
    stage i + 1 trains at 0.9 ** (13 - (i + 1)), the heads at 1."""
    backbone_cfg, depths = BACKBONES['caformer']
    model = segmentor(backbone_cfg)
    wrapper = build(
        model, decay_rate=0.9, decay_type='stage_wise', num_layers=12
    )
    check_every_parameter(model, wrapper, depths, 'stage_wise', 0.9, 12)
    lrs = {g['layer_id']: g['lr'] for g in wrapper.optimizer.param_groups}
    assert sorted(lrs) == [0, 1, 2, 3, 4, 13]
    assert lrs[4] == pytest.approx(LR * 0.9**9)


def test_frozen_and_idle_parameters_are_left_out():
    cfg = dict(
        type='ConvFormer', arch='s18', frozen_stages=1, out_indices=(0, 1, 2)
    )
    model = segmentor(cfg)
    wrapper = build(model, decay_rate=0.7)
    in_groups = {
        id(p) for g in wrapper.optimizer.param_groups for p in g['params']
    }
    for name, param in model.named_parameters():
        frozen = name.startswith(
            ('backbone.stem.', 'backbone.stages.0.', 'backbone.stages.3.')
        )
        assert (id(param) in in_groups) != frozen, name
    # The numbering does not move: stage 1 still starts at layer 4.
    check_every_parameter(
        model, wrapper, [3, 3, 9, 3], 'layer_wise', 0.7, num_layers=18
    )


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_found_from_mmdet_and_mmseg_scopes(scope):
    """Registered in mmengine's root registry: either scope builds it, and
    mmdet's/mmseg's own LearningRateDecayOptimizerConstructor (ConvNeXt
    only) does not shadow it."""
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    model = segmentor(BACKBONES['poolformer'][0])
    with DefaultScope.overwrite_default_scope(scope):
        cls = OPTIM_WRAPPER_CONSTRUCTORS.get('MetaFormerLayerDecayConstructor')
        wrapper = build(model, decay_rate=0.5)
    assert cls is MetaFormerLayerDecayConstructor
    assert len(wrapper.optimizer.param_groups) == 2 * (12 + 2)


def test_logs_every_group(tmp_path):
    log_file = tmp_path / 'groups.log'
    MMLogger.get_instance(
        'test_layer_decay_log', log_file=str(log_file), log_level='INFO'
    )
    model = segmentor(BACKBONES['caformer'][0])
    wrapper = build(model, decay_rate=0.8, decay_type='stage_wise')
    text = log_file.read_text()
    assert (
        'MetaFormerLayerDecayConstructor: CAFormer([3, 3, 9, 3]), '
        'decay_type=stage_wise, decay_rate=0.8, num_layers=4'
    ) in text
    for group in wrapper.optimizer.param_groups:
        line = re.search(rf'^  {group["group_name"]}: (.*)$', text, re.M)
        assert line, (group['group_name'], text)
        fields = dict(re.findall(r'(\w+)=([^\s]+)', line.group(1)))
        assert float(fields['lr']) == pytest.approx(group['lr'], rel=1e-5)
        assert float(fields['lr_scale']) == pytest.approx(
            group['lr_scale'], rel=1e-5
        )
        assert float(fields['weight_decay']) == group['weight_decay']
        assert int(fields['tensors']) == len(group['params'])


@pytest.mark.parametrize(
    'paramwise,message',
    [
        (
            dict(decay_rate=0.9, flat_decay_mult=0.0),
            "unknown keys ['flat_decay_mult']; valid keys: decay_rate, "
            'decay_type, num_layers',
        ),
        (
            dict(decay_rate=0.9, decay_type='layer_wise_vit'),
            "decay_type 'layer_wise_vit' is not supported; valid types: "
            'layer_wise, stage_wise',
        ),
        (dict(decay_type='layer_wise'), 'decay_rate=None must be a number in'),
        (dict(decay_rate=1.5), 'decay_rate=1.5 must be a number in (0, 1]'),
        (dict(decay_rate=0.9, num_layers=2.5), 'num_layers=2.5 must be'),
    ],
)
def test_bad_paramwise_cfg_is_rejected(paramwise, message):
    with pytest.raises(ValueError) as err:
        MetaFormerLayerDecayConstructor(
            dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR)),
            paramwise,
        )
    assert message in str(err.value)


def test_num_layers_below_the_backbone_is_rejected():
    model = segmentor(BACKBONES['convformer'][0])
    with pytest.raises(ValueError) as err:
        build(model, decay_rate=0.7, num_layers=6)  # ConvNeXt-T's grouping
    assert (
        'num_layers=6 is below the 18 layer_wise layers of '
        'ConvFormer([3, 3, 9, 3])'
    ) in str(err.value)
    assert 'use num_layers=18' in str(err.value)


def test_other_backbones_are_rejected():
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    with torch.device('meta'):
        resnet_model = MODELS.build(
            dict(
                type='EncoderDecoder',
                backbone=dict(type='ResNetV1c', depth=18),
                decode_head=dict(
                    type='FCNHead', in_channels=512, channels=8, num_classes=3
                ),
            )
        )
    with pytest.raises(TypeError) as err:
        build(resnet_model, decay_rate=0.9)
    assert 'got ResNetV1c' in str(err.value)
    assert 'ConvMixer' in str(err.value)
