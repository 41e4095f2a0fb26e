"""Every published weight format loads, and features match the references.

The checkpoints are made here in each published key layout (the official
files cannot be downloaded): the writers below are the inverse of the
converters, written independently from the published key lists (the
authors' PoolFormer and MetaFormer-baselines repositories, timm,
mmpretrain).

What goes through a file is a model of each family and layout at a tiny
size (one block a stage, narrow widths; each reference built at that size
through its own public constructor, with its variant's other arguments):
reading a file does not depend on the model's size, writing 50-100 MB per
test would. Every published size is compared with its reference from
memory.
"""

import re

import pytest
import timm
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401
from mmmetaformer.checkpoint import (
    CheckpointMismatchError,
    detect_format,
    load_pretrained,
    to_native,
)
from mmmetaformer.models.core import ConvMixerTrunk
from mmmetaformer.registry import MODELS
from tests.helpers import (
    GROWING_TINY_ARCH,
    family_archs,
    module_layout,
    run_tool,
    smallest_archs,
    timm_layout,
    tiny_backbone_config,
    tiny_timm_metaformer,
)
from tests.tolerance import assert_close, model_rounding

# Every arch of the families timm has (all but IdentityFormer, RandFormer
# and ConvMixer's pyramid), under timm's model name.
TIMM_TO_OURS = {
    f'{family}_{arch}': (name, arch)
    for family, name, arch in family_archs()
    if family in ('poolformer', 'poolformerv2', 'convformer', 'caformer')
}


def randomised(model, scale=0.01, seed=0):
    """Perturb every parameter so layer scales and norms matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def timm_model(name, **kwargs):
    return randomised(timm.create_model(name, pretrained=False, **kwargs))


def ours(cls_name, arch, checkpoint=None, out_norms=False, **kwargs):
    """Our backbone, its weights from ``checkpoint`` through ``init_cfg``;
    without the output norms (what timm's features lack) unless
    ``out_norms``."""
    init_cfg = (
        dict(type='Pretrained', checkpoint=str(checkpoint))
        if checkpoint
        else None
    )
    if not out_norms:
        kwargs['out_norm_cfg'] = None
    model = MODELS.build(
        dict(type=cls_name, arch=arch, init_cfg=init_cfg, **kwargs)
    )
    model.init_weights()
    return model.eval()


def assert_features_equal(ours_feats, ref_feats, model):
    """Stage features of two implementations equal up to the rounding of
    ``model``'s longest sum through its depth (``tests/tolerance.py``)."""
    assert len(ours_feats) == len(ref_feats)
    reduction, depth = model_rounding(model)
    for i, (a, b) in enumerate(zip(ours_feats, ref_feats)):
        assert_close(a, b, reduction, depth, msg=f'stage {i}')


# --- writers of the published layouts (inverse of the converters) --------


def as_poolformer_v1(native):
    out = {}
    for key, value in native.items():
        key = re.sub(r'^stem\.conv\.', 'patch_embed.proj.', key)
        key = re.sub(
            r'^stages\.(\d)\.downsample\.conv\.',
            lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.',
            key,
        )
        key = re.sub(r'layer_scale([12])\.scale$', r'layer_scale_\1', key)
        key = re.sub(
            r'^stages\.(\d)\.blocks\.',
            lambda m: f'network.{2 * int(m.group(1))}.',
            key,
        )
        out[key] = value
    return out


def as_metaformer_baselines(native):
    out = {}
    for key, value in native.items():
        key = re.sub(r'^stem\.conv\.', 'downsample_layers.0.conv.', key)
        key = re.sub(r'^stem\.norm\.', 'downsample_layers.0.post_norm.', key)
        key = re.sub(
            r'^stages\.(\d)\.downsample\.norm\.',
            r'downsample_layers.\1.pre_norm.',
            key,
        )
        key = re.sub(
            r'^stages\.(\d)\.downsample\.conv\.',
            r'downsample_layers.\1.conv.',
            key,
        )
        key = re.sub(r'^stages\.(\d)\.blocks\.(\d+)\.', r'stages.\1.\2.', key)
        if re.search(r'(mlp\.fc[12]|pwconv[12])\.weight$', key):
            value = value[:, :, 0, 0]  # channels-last nn.Linear
        out[key] = value
    return out


def with_classifier(state_dict, dim, baselines=False):
    state_dict = dict(state_dict)
    state_dict['norm.weight'] = torch.ones(dim)
    if baselines:
        state_dict['head.fc1.weight'] = torch.zeros(4 * dim, dim)
        state_dict['head.fc2.weight'] = torch.zeros(1000, 4 * dim)
    else:
        state_dict['norm.bias'] = torch.zeros(dim)
        state_dict['head.weight'] = torch.zeros(1000, dim)
        state_dict['head.bias'] = torch.zeros(1000)
    return state_dict


# --- parity with the independent references ------------------------------


# The smallest arch of each family timm has: the variant whose layout the
# tiny references of the file tests take.
TIMM_SMALLEST = sorted(
    {f'{family}_{arch}' for family, _, arch in smallest_archs()}
    & set(TIMM_TO_OURS)
)


def assert_timm_features(model, reference):
    """``model``'s stage features are timm ``reference``'s
    ``forward_intermediates`` on an odd-sized input."""
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert_features_equal(
            model(x),
            reference.forward_intermediates(x, intermediates_only=True),
            model,
        )


@pytest.mark.parametrize('timm_name', sorted(TIMM_TO_OURS))
def test_timm_parity_at_every_size(timm_name):
    """timm weights of every published size, loaded from memory by the
    same conversion init_cfg uses, give timm's forward_intermediates."""
    reference = timm_model(timm_name)
    model = ours(*TIMM_TO_OURS[timm_name])
    report = load_pretrained(model, reference.state_dict())
    assert report['format'] == 'timm'
    model.eval()
    assert_timm_features(model, reference)


@pytest.mark.parametrize('timm_name', TIMM_SMALLEST)
def test_timm_parity_through_init_cfg(timm_name, tmp_path):
    """A timm file of each family (its variant at a tiny size) through
    init_cfg gives timm's forward_intermediates."""
    reference = randomised(tiny_timm_metaformer(timm_name))
    path = tmp_path / f'{timm_name}_tiny.pth'
    torch.save(reference.state_dict(), path)
    model = ours(TIMM_TO_OURS[timm_name][0], GROWING_TINY_ARCH, path)
    assert_timm_features(model, reference)


def test_timm_features_only_parity_and_safetensors(tmp_path):
    """A .safetensors timm file; reference is timm's features_only model."""
    from safetensors.torch import save_file

    full = randomised(tiny_timm_metaformer('caformer_s18'))
    features = tiny_timm_metaformer('caformer_s18', features_only=True)
    features.eval()
    # features_only renames stages.{i} to stages_{i}
    features.load_state_dict(
        {
            re.sub(r'^stages\.(\d)', r'stages_\1', k): v
            for k, v in full.state_dict().items()
            if not k.startswith('head.')
        }
    )
    path = tmp_path / 'caformer_s18_tiny.safetensors'
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    model = ours('CAFormer', GROWING_TINY_ARCH, checkpoint=path)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert_features_equal(model(x), features(x), model)


def test_identityformer_parity_with_timm_generic_metaformer(tmp_path):
    """S12 from memory; the same model at a tiny size through a file."""
    from timm.models.metaformer import GroupNorm1NoBias, MetaFormer

    x = torch.randn(1, 3, 97, 131)
    for arch, path in (
        (dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512)), None),
        (GROWING_TINY_ARCH, tmp_path / 'identityformer_tiny_timm.pth'),
    ):
        reference = randomised(
            MetaFormer(
                **arch,
                token_mixers=torch.nn.Identity,
                norm_layers=GroupNorm1NoBias,
            )
        )
        if path is None:
            model = ours('IdentityFormer', 's12')
            report = load_pretrained(model, reference.state_dict())
            assert report['format'] == 'timm'
            model.eval()
        else:
            torch.save(reference.state_dict(), path)
            model = ours('IdentityFormer', arch, checkpoint=path)
        with torch.no_grad():
            assert_features_equal(
                model(x),
                reference.forward_intermediates(x, intermediates_only=True),
                model,
            )


def assert_convmixer_trunk_parity(model, reference):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        trunk = ConvMixerTrunk.forward(model, x)
        assert_close(
            trunk,
            reference.forward_features(x),
            *model_rounding(reference),
            msg='trunk',
        )
        outs = model(x)
    assert [o.shape[1] for o in outs] == list(model.out_channels)


@pytest.mark.parametrize(
    'timm_name,arch',
    [('convmixer_768_32', '768/32'), ('convmixer_1024_20_ks9_p14', '1024/20')],
)
def test_convmixer_trunk_parity_with_timm(timm_name, arch):
    """Each published size from memory, converted as init_cfg does."""
    reference = timm_model(timm_name)
    model = ours('ConvMixer', arch)
    assert load_pretrained(model, reference.state_dict())['format'] == 'timm'
    assert_convmixer_trunk_parity(model.eval(), reference)


def test_convmixer_trunk_parity_through_init_cfg(tmp_path):
    """A timm ConvMixer file (convmixer_768_32's ReLU and kernels at
    width 128 and depth 4, through timm's constructor) through init_cfg."""
    from timm.models.convmixer import ConvMixer

    reference = randomised(
        ConvMixer(
            dim=128, depth=4, kernel_size=7, patch_size=7, act_layer=nn.ReLU
        )
    )
    assert module_layout(reference) == timm_layout('convmixer_768_32')
    path = tmp_path / 'convmixer_tiny.pth'
    torch.save(reference.state_dict(), path)
    model = ours(
        'ConvMixer',
        dict(
            dim=128,
            depth=4,
            kernel_size=7,
            patch_size=7,
            act_cfg=dict(type='ReLU'),
        ),
        checkpoint=path,
    )
    assert_convmixer_trunk_parity(model, reference)


def test_poolformer_v1_parity_with_mmpretrain(tmp_path):
    """mmpretrain's PoolFormer, its checkpoint layout and output norms: S12
    from memory, the same at a tiny size (mmpretrain's S12 settings but
    depths and widths) through a file."""
    from mmpretrain.models.backbones import PoolFormer as MMPretrainPoolFormer

    s12 = MMPretrainPoolFormer.arch_settings['s12']
    tiny = dict(
        s12,
        layers=GROWING_TINY_ARCH['depths'],
        embed_dims=GROWING_TINY_ARCH['dims'],
    )
    x = torch.randn(1, 3, 97, 131)
    for ref_arch, arch, path in (
        ('s12', 's12', None),
        (tiny, GROWING_TINY_ARCH, tmp_path / 'poolformer_mmpretrain.pth'),
    ):
        reference = MMPretrainPoolFormer(
            arch=ref_arch, out_indices=(0, 2, 4, 6)
        )
        randomised(reference)  # (mmpretrain's train() returns None)
        reference.eval()
        state = {f'backbone.{k}': v for k, v in reference.state_dict().items()}
        dim = reference.norm6.weight.shape[0]
        state['head.fc.weight'] = torch.zeros(1000, dim)
        state['head.fc.bias'] = torch.zeros(1000)
        checkpoint = {'meta': {'epoch': 300}, 'state_dict': state}
        if path is None:
            model = MODELS.build(dict(type='PoolFormer', arch=arch))
            report = load_pretrained(model, checkpoint)
            assert report['format'] == 'mmpretrain'
        else:
            torch.save(checkpoint, path)
            model = ours('PoolFormer', arch, path, out_norms=True)
        with torch.no_grad():
            assert_features_equal(model.eval()(x), reference(x), model)


# --- every format through init_cfg ---------------------------------------


def timm_reference(name):
    """``(native backbone state dict, input, timm's stage features)`` of
    timm's variant ``name`` at ``GROWING_TINY_ARCH``."""
    reference = randomised(tiny_timm_metaformer(name))
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        feats = reference.forward_intermediates(x, intermediates_only=True)
    native, _, _ = to_native(reference.state_dict())
    return (
        {k: v for k, v in native.items() if not k.startswith('head.')},
        x,
        feats,
    )


# The classifier width of the tiny references
TINY_TOP = GROWING_TINY_ARCH['dims'][-1]


def tiny(cls_name, checkpoint=None):
    """Our backbone at the tiny references' size."""
    return ours(cls_name, GROWING_TINY_ARCH, checkpoint)


@pytest.fixture(scope='module')
def poolformer_reference():
    return timm_reference('poolformer_s12')


@pytest.fixture(scope='module')
def caformer_reference():
    return timm_reference('caformer_s18')


def test_authors_poolformer_v1_pth_tar(poolformer_reference, tmp_path):
    native, x, feats = poolformer_reference
    state = with_classifier(as_poolformer_v1(native), TINY_TOP)
    assert detect_format(state) == 'poolformer_v1'
    path = tmp_path / 'poolformer_tiny.pth.tar'
    torch.save(state, path)
    model = tiny('PoolFormer', path)
    with torch.no_grad():
        assert_features_equal(model(x), feats, model)


def test_authors_metaformer_baselines_pth(caformer_reference, tmp_path):
    native, x, feats = caformer_reference
    state = with_classifier(
        as_metaformer_baselines(native), TINY_TOP, baselines=True
    )
    assert detect_format(state) == 'metaformer_baselines'
    assert state['stages.0.0.mlp.fc1.weight'].dim() == 2
    path = tmp_path / 'caformer_tiny.pth'
    torch.save(state, path)
    model = tiny('CAFormer', path)
    with torch.no_grad():
        assert_features_equal(model(x), feats, model)


@pytest.mark.parametrize(
    'cls_name,arch,writer,fmt',
    [
        ('PoolFormer', 's12', as_poolformer_v1, 'poolformer_v1'),
        ('CAFormer', 's18', as_metaformer_baselines, 'metaformer_baselines'),
    ],
)
def test_authors_layouts_of_published_sizes(cls_name, arch, writer, fmt):
    """The authors' layouts at a published size (several blocks a stage,
    which the tiny files above lack), from memory: exactly our tensors."""
    source = randomised(ours(cls_name, arch))
    state = with_classifier(
        writer(source.state_dict()),
        512,
        baselines=writer is not as_poolformer_v1,
    )
    model = ours(cls_name, arch)
    assert load_pretrained(model, state)['format'] == fmt
    loaded, expected = model.state_dict(), source.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_randformer_baselines_format_round_trip(tmp_path):
    """RandFormer's frozen matrices come from the checkpoint."""
    # two blocks in stage 3: each block's matrix from the checkpoint
    arch = dict(GROWING_TINY_ARCH, depths=[1, 1, 2, 1])
    torch.manual_seed(3)
    source = randomised(
        MODELS.build(dict(type='RandFormer', arch=arch, out_norm_cfg=None))
    )
    state = as_metaformer_baselines(source.state_dict())
    assert 'stages.2.1.token_mixer.random_matrix' in state
    path = tmp_path / 'randformer_tiny.pth'
    torch.save(with_classifier(state, TINY_TOP, baselines=True), path)
    torch.manual_seed(99)  # a different random draw before loading
    model = ours('RandFormer', arch, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_features_equal(model(x), source(x), model)
        # and at a detection-like size, through the resampled matrices
        x = torch.randn(1, 3, 97, 131)
        assert_features_equal(model(x), source(x), model)


def test_our_format_from_the_converter_and_a_full_detector(
    poolformer_reference, tmp_path
):
    native, x, feats = poolformer_reference
    src = tmp_path / 'poolformer_tiny.pth.tar'
    torch.save(with_classifier(as_poolformer_v1(native), TINY_TOP), src)
    dst = tmp_path / 'poolformer_tiny_converted.pth'
    proc = run_tool(
        'convert_checkpoint.py',
        src,
        dst,
        '--check-config',
        tiny_backbone_config(tmp_path, 'PoolFormer', GROWING_TINY_ARCH),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'poolformer_v1' in proc.stdout and 'classifier' in proc.stdout
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['mmmetaformer_format'] == 1
    assert not any(
        k.startswith(('head.', 'norm.')) for k in converted['state_dict']
    )
    model = tiny('PoolFormer', dst)
    with torch.no_grad():
        assert_features_equal(model(x), feats, model)
    # A whole mmdet checkpoint: backbone.* plus neck/head tensors.
    full = {f'backbone.{k}': v for k, v in native.items()}
    full['neck.lateral_convs.0.conv.weight'] = torch.zeros(64, 32, 1, 1)
    full['bbox_head.retina_cls.bias'] = torch.zeros(9)
    det = tmp_path / 'retinanet_epoch_12.pth'
    torch.save({'meta': {'epoch': 12}, 'state_dict': full}, det)
    model = tiny('PoolFormer', det)
    with torch.no_grad():
        assert_features_equal(model(x), feats, model)


def test_output_norms_load_from_our_format_and_are_new_otherwise(
    poolformer_reference, tmp_path
):
    native, _, _ = poolformer_reference
    model = MODELS.build(dict(type='PoolFormer', arch=GROWING_TINY_ARCH))
    with torch.no_grad():
        model.out_norms['2'].weight.fill_(3.0)
    path = tmp_path / 'with_norms.pth'
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v for k, v in model.state_dict().items()
            }
        },
        path,
    )
    loaded = ours('PoolFormer', GROWING_TINY_ARCH, path, out_norms=True)
    assert torch.all(loaded.out_norms['2'].weight == 3.0)
    # ImageNet weights have no output norms: they keep their init.
    path = tmp_path / 'imagenet.pth'
    torch.save(native, path)
    fresh = ours('PoolFormer', GROWING_TINY_ARCH, path, out_norms=True)
    assert torch.all(fresh.out_norms['2'].weight == 1.0)


# --- errors ----------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nowhere.pth'
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        ours('PoolFormer', 's12', path)


def test_wrong_arch_lists_mismatched_keys(poolformer_reference, tmp_path):
    native, _, _ = poolformer_reference
    path = tmp_path / 'tiny.pth'
    torch.save(native, path)
    # deeper (as S24 is than S12), then wider (as M36 is)
    deeper = dict(GROWING_TINY_ARCH, depths=[3, 1, 1, 1])
    with pytest.raises(CheckpointMismatchError) as err:
        ours('PoolFormer', deeper, path)
    msg = str(err.value)
    assert 'missing in checkpoint' in msg and 'stages.0.blocks.2' in msg
    wider = dict(GROWING_TINY_ARCH, dims=[32, 64, 128, 192])
    with pytest.raises(
        CheckpointMismatchError, match='shape or type mismatch'
    ):
        ours('PoolFormer', wider, path)


def test_unexpected_key_is_reported_not_hidden(poolformer_reference, tmp_path):
    native, _, _ = poolformer_reference
    state = dict(native)
    state['stages.1.blocks.0.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'extra.pth'
    torch.save(state, path)
    with pytest.raises(
        CheckpointMismatchError, match=r'not in the model \(1\).*extra\.weight'
    ):
        tiny('PoolFormer', path)


def test_pickled_objects_are_refused(poolformer_reference, tmp_path):
    """weights_only=True: a checkpoint can never run code."""
    import argparse

    native, _, _ = poolformer_reference
    path = tmp_path / 'with_args.pth.tar'
    torch.save({'state_dict': native, 'args': argparse.Namespace(lr=1)}, path)
    with pytest.raises(RuntimeError, match='refused'):
        tiny('PoolFormer', path)


def test_unknown_layout_and_format_names():
    with pytest.raises(ValueError, match='Known formats: poolformer_v1'):
        detect_format({'encoder.layer.0.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match="Unknown checkpoint format 'onnx'"):
        to_native({'stem.conv.weight': torch.zeros(1)}, 'onnx')


def test_converter_errors_are_clear(tmp_path):
    proc = run_tool(
        'convert_checkpoint.py', tmp_path / 'none.pth', tmp_path / 'out.pth'
    )
    assert proc.returncode == 2 and 'none.pth' in proc.stderr
    assert 'Traceback' not in proc.stderr
    proc = run_tool(
        'convert_checkpoint.py', 'a.pth', 'b.pth', '--format', 'onnx'
    )
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr
