"""Published trained dense models convert and load into our configs.

* mmseg's model zoo: the real reference. mmseg's own
  ``mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py`` model
  (``mmpretrain.PoolFormer`` backbone) gets random weights and is saved as
  the zoo saves it; the converted file loads strictly into
  ``configs/semantic_fpn_poolformer_s12_ade20k.py``, whose logits equal
  mmseg's.
* The authors' mmdet 2.x RetinaNet (``FORK_LAST3``: no ``backbone.norm0``,
  and the 4-output variant) and Mask R-CNN cannot be built here (mmdet 2.x):
  files are written in their documented key layout (sail-sg/poolformer
  ``models/poolformer.py`` and its ``detection/`` configs) by a writer
  independent of the converter, from our randomised model; converting them
  back must give the same model, outputs included.

What is tested is the key layout and the outputs, not the size: every
model here is the published config with a one-block, narrow backbone and
narrow heads (``tests/helpers.py`` ``tiny_variant``; mmseg's with its
PoolFormer-S12 arch options at the same depths and widths), so each file
is about a megabyte instead of 50-250 MB.
"""

import copy
import functools
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.utils import get_installed_path

import mmmetaformer  # noqa: F401
from mmmetaformer.checkpoint.formats import (
    DENSE_MODELS,
    convert_poolformer_dense,
    dense_model_kind,
    dense_to_native,
)
from mmmetaformer.engine import sync_bn_to_bn
from tests.helpers import (
    GROWING_TINY_DIMS,
    REPO_ROOT,
    load_tool,
    module_layout,
    tiny_variant,
)
from tests.tolerance import assert_close, model_rounding

CONFIGS = REPO_ROOT / 'configs'
# mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py
ZOO_CONFIG = (
    Path(get_installed_path('mmseg'))
    / '.mim'
    / 'configs'
    / 'poolformer'
    / 'fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py'
)
COCO_CLASSES = tuple(f'class{i}' for i in range(80))
# The published configs these tests convert into.
OUR_CONFIGS = dict(
    retinanet=CONFIGS / 'retinanet_poolformer_s12_coco.py',
    mask_rcnn=CONFIGS / 'mask_rcnn_poolformer_s12_coco.py',
    semantic_fpn=CONFIGS / 'semantic_fpn_poolformer_s12_ade20k.py',
)


@functools.cache
def convert_tool():
    return load_tool('convert_checkpoint.py')


def convert(src, dst, *options):
    """Run tools/convert_checkpoint.py's main; return its exit status."""
    return convert_tool().main([str(src), str(dst), *map(str, options)])


@functools.cache
def load_config(config):
    """Parsing a config with mmdet::/mmseg:: bases costs a second or more:
    once per config. Callers copy what they change."""
    return Config.fromfile(str(config))


def build(config, scope):
    """A model from a config (SyncBN -> BN, no pretrained download)."""
    init_default_scope(scope)
    model_cfg = copy.deepcopy(load_config(config).model)
    model_cfg.backbone.init_cfg = None
    sync_bn_to_bn(model_cfg)
    from mmengine.registry import MODELS

    return MODELS.build(model_cfg)


def randomise(model, seed=0):
    """Non-trivial weights everywhere: convs and linears at unit gain, norm
    and layer-scale weights around 1 / 0.5, biases and BN statistics off
    zero, so that a misplaced tensor changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.dim() > 1:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif name.endswith('running_var'):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif 'layer_scale' in name:
                tensor.copy_(0.5 + 0.2 * noise)
            elif name.endswith('weight'):
                tensor.copy_(1.0 + 0.2 * noise)
            else:  # biases, running means
                tensor.copy_(0.2 * noise)
    return model.eval()


@pytest.fixture(scope='module')
def tiny_configs(tmp_path_factory):
    """``{kind: path}``: our published configs (``OUR_CONFIGS``) with a
    one-block backbone of growing widths (as in every published layout) and
    the tiny heads, and ``'zoo'``: mmseg's zoo config with the same neck
    and head widths and mmpretrain's PoolFormer at the same depths and
    widths, its S12 options kept (``mlp_ratios``,
    ``layer_scale_init_value``)."""
    from mmpretrain.models.backbones import PoolFormer as MMPretrainPoolFormer

    directory = tmp_path_factory.mktemp('tiny_configs')
    dims = GROWING_TINY_DIMS
    tiny = {
        kind: tiny_variant(directory, config, kind, dims)
        for kind, config in OUR_CONFIGS.items()
    }
    zoo_arch = dict(
        MMPretrainPoolFormer.arch_settings['s12'],
        layers=[1, 1, 1, 1],
        embed_dims=dims,
    )
    tiny['zoo'] = tiny_variant(
        directory, ZOO_CONFIG, 'semantic_fpn', dims, zoo_arch
    )
    return tiny


# --- the real reference: mmseg's zoo model -------------------------------


@pytest.fixture(scope='module')
def zoo_segmentor(tiny_configs):
    """mmseg's own Semantic FPN with mmpretrain's PoolFormer, tiny, random
    weights; its options are the zoo's PoolFormer-S12 model's (the same
    module classes and key pattern, built in memory only)."""
    tiny = build(tiny_configs['zoo'], 'mmseg')
    assert module_layout(tiny) == module_layout(build(ZOO_CONFIG, 'mmseg'))
    return randomise(tiny)


def test_zoo_semantic_fpn_converts_and_gives_the_same_logits(
    zoo_segmentor, tiny_configs, tmp_path
):
    zoo = zoo_segmentor
    assert type(zoo.backbone).__name__ == 'PoolFormer'
    assert type(zoo.backbone).__module__.startswith('mmpretrain')
    src, dst = tmp_path / 'zoo.pth', tmp_path / 'ours.pth'
    # As the zoo files are: mmcv 1.x meta (mmseg 0.x) + the state dict.
    torch.save(
        dict(
            meta=dict(
                mmseg_version='0.24.1',
                CLASSES=('wall',) * 150,
                PALETTE=[[120, 120, 120]] * 150,
                iter=40000,
            ),
            state_dict=zoo.state_dict(),
        ),
        src,
    )
    zoo_keys = set(zoo.state_dict())
    assert {
        'backbone.norm0.weight',
        'backbone.norm6.bias',
        'backbone.network.1.proj.weight',
    } <= zoo_keys
    config = tiny_configs['semantic_fpn']
    assert convert(src, dst, '--check-config', config) == 0
    src.unlink()  # read

    ours = build(config, 'mmseg').eval()
    # mmengine's own loader, as load_from / tools/test.py use it; strict.
    checkpoint = load_checkpoint(ours, str(dst), strict=True)
    dst.unlink()  # read
    assert checkpoint['meta']['dataset_meta']['classes'][0] == 'wall'
    assert checkpoint['meta']['model'] == 'semantic_fpn'
    assert len(checkpoint['state_dict']) == len(zoo_keys)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = zoo(x, mode='tensor')
        logits = ours(x, mode='tensor')
    assert logits.shape == expected.shape == (1, 150, 16, 24)
    assert expected.abs().mean() > 0.1  # the weights do something
    # mmpretrain's and our PoolFormer: two computations of the same values
    assert_close(logits, expected, *model_rounding(ours), msg='logits')


# --- the authors' mmdet 2.x files, in their documented layout ------------


def as_authors_backbone(native, fork_last3):
    """Our backbone keys -> the authors' ``poolformer_*_feat`` keys."""
    out = {}
    for key, value in native.items():
        key = re.sub(r'^stem\.conv\.', 'patch_embed.proj.', key)
        key = re.sub(
            r'^stages\.(\d)\.downsample\.conv\.',
            lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.',
            key,
        )
        key = re.sub(r'\.layer_scale([12])\.scale$', r'.layer_scale_\1', key)
        key = re.sub(
            r'^stages\.(\d)\.blocks\.',
            lambda m: f'network.{2 * int(m.group(1))}.',
            key,
        )
        key = re.sub(
            r'^out_norms\.(\d)\.', lambda m: f'norm{2 * int(m.group(1))}.', key
        )
        out[key] = value
    if not fork_last3 and 'norm0.weight' not in out:
        # The 4-output RetinaNet: a norm on stage 0 that nothing reads.
        width = native['stem.conv.weight'].shape[0]
        out['norm0.weight'] = torch.rand(width) + 0.5
        out['norm0.bias'] = torch.rand(width)
    return out


def as_published_file(state_dict, fork_last3=False, meta=None):
    """A whole model's state dict as the authors' mmdet 2.x / mmseg 0.x
    runners (and mmseg's zoo) saved it: meta, state_dict, optimizer."""
    backbone = {
        k[len('backbone.') :]: v
        for k, v in state_dict.items()
        if k.startswith('backbone.')
    }
    out = {
        f'backbone.{k}': v
        for k, v in as_authors_backbone(backbone, fork_last3).items()
    }
    out.update(
        {k: v for k, v in state_dict.items() if not k.startswith('backbone.')}
    )
    return dict(
        meta=meta
        or dict(mmdet_version='2.19.0', CLASSES=COCO_CLASSES, epoch=12),
        state_dict=out,
        optimizer=dict(state={}, param_groups=[dict(lr=1e-4)]),
    )


def as_mmdet2_file(model, fork_last3=False):
    return as_published_file(model.state_dict(), fork_last3)


def head_outputs(model, x):
    with torch.no_grad():
        return model._forward(x)


def flatten(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flatten(item)]


@pytest.fixture(scope='module')
def retinanet(tiny_configs):
    return randomise(build(tiny_configs['retinanet'], 'mmdet'), seed=2)


def test_authors_retinanet_converts_to_our_layout(
    retinanet, tiny_configs, tmp_path, capsys
):
    """The published RetinaNets were trained with FORK_LAST3: no norm0."""
    source = as_mmdet2_file(retinanet, fork_last3=True)
    assert {
        'backbone.norm2.weight',
        'bbox_head.retina_cls.weight',
        'neck.fpn_convs.4.conv.weight',
    } <= set(source['state_dict'])
    assert 'backbone.norm0.weight' not in source['state_dict']
    src, dst = tmp_path / 'retinanet_mmdet2.pth', tmp_path / 'ours.pth'
    torch.save(source, src)
    assert convert(src, dst) == 0
    src.unlink()  # read
    assert 'whole retinanet' in capsys.readouterr().out

    fresh = build(tiny_configs['retinanet'], 'mmdet').eval()
    load_checkpoint(fresh, str(dst), strict=True)
    dst.unlink()  # read
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    for got, want in zip(
        flatten(head_outputs(fresh, x)), flatten(head_outputs(retinanet, x))
    ):
        assert torch.equal(got, want)


def test_four_output_retinanet_drops_only_the_unread_norm(retinanet):
    """A RetinaNet trained without FORK_LAST3 has a norm on stage 0 that its
    FPN (start_level=1) never reads: dropped and named, the rest as with
    FORK_LAST3."""
    last3 = as_mmdet2_file(retinanet, fork_last3=True)['state_dict']
    four = as_mmdet2_file(retinanet, fork_last3=False)['state_dict']
    assert set(four) - set(last3) == {
        'backbone.norm0.weight',
        'backbone.norm0.bias',
    }
    converted, dropped = convert_poolformer_dense(four, 'retinanet')
    expected, nothing = convert_poolformer_dense(last3, 'retinanet')
    assert dropped == ['backbone.norm0.bias', 'backbone.norm0.weight']
    assert nothing == []
    assert set(converted) == set(expected) == set(retinanet.state_dict())
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.fixture(scope='module')
def mask_rcnn(tiny_configs):
    return randomise(build(tiny_configs['mask_rcnn'], 'mmdet'), seed=4)


def test_authors_mask_rcnn_converts_to_our_layout(
    mask_rcnn, tiny_configs, tmp_path
):
    source = as_mmdet2_file(mask_rcnn)
    assert {
        'backbone.norm0.weight',
        'rpn_head.rpn_conv.weight',
        'roi_head.bbox_head.shared_fcs.1.weight',
        'roi_head.mask_head.conv_logits.weight',
    } <= set(source['state_dict'])
    src, dst = tmp_path / 'mask_rcnn_mmdet2.pth', tmp_path / 'ours.pth'
    torch.save(source, src)
    assert convert(src, dst) == 0
    src.unlink()  # read
    fresh = build(tiny_configs['mask_rcnn'], 'mmdet').eval()
    checkpoint = load_checkpoint(fresh, str(dst), strict=True)
    dst.unlink()  # read
    assert checkpoint['meta']['dataset_meta']['classes'] == COCO_CLASSES
    for key, value in mask_rcnn.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.extract_feat(x), mask_rcnn.extract_feat(x), rtol=0, atol=0
        )


def test_fork_last3_backbone_in_a_mask_rcnn_is_refused(mask_rcnn):
    source = as_mmdet2_file(mask_rcnn)
    state_dict = {
        k: v
        for k, v in source['state_dict'].items()
        if not k.startswith('backbone.norm0.')
    }
    with pytest.raises(
        ValueError,
        match=r"no output norm \['backbone.norm0'"
        r'\].*FORK_LAST3',
    ):
        convert_poolformer_dense(state_dict, 'mask_rcnn')


def test_wrong_config_is_named_with_the_mismatching_keys(
    mask_rcnn, tiny_configs, tmp_path, capsys
):
    """A Mask R-CNN file checked against the RetinaNet config fails and
    lists what does not fit."""
    src, dst = tmp_path / 'mask_rcnn.pth', tmp_path / 'ours.pth'
    torch.save(as_mmdet2_file(mask_rcnn), src)
    status = convert(src, dst, '--check-config', tiny_configs['retinanet'])
    assert status == 1
    src.unlink()  # read
    assert not dst.exists()
    err = capsys.readouterr().err
    assert 'missing in the checkpoint' in err and 'not in the model' in err
    assert 'roi_head.mask_head' in err and 'bbox_head.retina_cls' in err


def test_dense_detection_and_its_limits():
    backbone = {'backbone.patch_embed.proj.weight': torch.zeros(1)}
    assert dense_model_kind(backbone) is None  # a backbone alone
    assert (
        dense_model_kind(
            {
                'backbone.stem.conv.weight': torch.zeros(1),
                'neck.x': torch.zeros(1),
            }
        )
        is None
    )  # ours
    for kind, spec in DENSE_MODELS.items():
        assert (
            dense_model_kind(
                dict(backbone, **{spec['marker'] + 'weight': torch.zeros(1)})
            )
            == kind
        )
    with pytest.raises(
        ValueError,
        match=r"model parts \['bbox_head', "
        r"'neck'\], which match none of the known",
    ):
        dense_model_kind(
            dict(
                backbone,
                **{
                    'bbox_head.fcos_cls.weight': torch.zeros(1),
                    'neck.fpn_convs.0.conv.weight': torch.zeros(1),
                },
            )
        )
    # an mmpretrain classifier is not a dense model: backbone-only path
    classifier = dict(backbone, **{'head.fc.weight': torch.zeros(1)})
    assert dense_to_native({'state_dict': classifier}) is None
