"""Every published weight format loads, and features match the references.

The checkpoints are made here in each published key layout (the official
files cannot be downloaded): the writers below are the inverse of the
converters, written independently from the published key lists (the
authors' PoolFormer and MetaFormer-baselines repositories, timm,
mmpretrain).
"""

import re

import pytest
import timm
import torch

import mmmetaformer  # noqa: F401
from mmmetaformer.checkpoint import (
    CheckpointMismatchError,
    detect_format,
    load_pretrained,
    to_native,
)
from mmmetaformer.models.core import ConvMixerTrunk
from mmmetaformer.registry import MODELS
from tests.helpers import family_archs, run_tool, smallest_archs

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


def ours(cls_name, arch, checkpoint=None, **kwargs):
    init_cfg = (
        dict(type='Pretrained', checkpoint=str(checkpoint))
        if checkpoint
        else None
    )
    model = MODELS.build(
        dict(
            type=cls_name,
            arch=arch,
            out_norm_cfg=None,
            init_cfg=init_cfg,
            **kwargs,
        )
    )
    model.init_weights()
    return model.eval()


def assert_features_equal(ours_feats, ref_feats):
    assert len(ours_feats) == len(ref_feats)
    for a, b in zip(ours_feats, ref_feats):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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


# The smallest arch of each family goes through a file and init_cfg; the
# larger ones through the same conversion and load from memory (reading a
# file does not depend on the arch; writing 100-400 MB per arch would).
TIMM_THROUGH_FILES = {
    f'{family}_{arch}' for family, _, arch in smallest_archs()
} & set(TIMM_TO_OURS)


@pytest.mark.parametrize('timm_name', sorted(TIMM_TO_OURS))
def test_timm_parity_through_init_cfg(timm_name, tmp_path):
    """timm weights, via init_cfg or loaded from memory, give timm's
    forward_intermediates."""
    reference = timm_model(timm_name)
    if timm_name in TIMM_THROUGH_FILES:
        path = tmp_path / f'{timm_name}.pth'
        torch.save(reference.state_dict(), path)
        model = ours(*TIMM_TO_OURS[timm_name], checkpoint=path)
    else:
        model = ours(*TIMM_TO_OURS[timm_name])
        report = load_pretrained(model, reference.state_dict())
        assert report['format'] == 'timm'
        model.eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert_features_equal(
            model(x),
            reference.forward_intermediates(x, intermediates_only=True),
        )


def test_timm_features_only_parity_and_safetensors(tmp_path):
    """A .safetensors timm file; reference is timm's features_only model."""
    from safetensors.torch import save_file

    full = timm_model('caformer_s18')
    features = timm.create_model(
        'caformer_s18', pretrained=False, features_only=True
    ).eval()
    # features_only renames stages.{i} to stages_{i}
    features.load_state_dict(
        {
            re.sub(r'^stages\.(\d)', r'stages_\1', k): v
            for k, v in full.state_dict().items()
            if not k.startswith('head.')
        }
    )
    path = tmp_path / 'caformer_s18.safetensors'
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    model = ours('CAFormer', 's18', checkpoint=path)
    path.unlink()  # read (~100 MB)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert_features_equal(model(x), features(x))


def test_identityformer_parity_with_timm_generic_metaformer(tmp_path):
    from timm.models.metaformer import GroupNorm1NoBias, MetaFormer

    reference = randomised(
        MetaFormer(
            depths=(2, 2, 6, 2),
            dims=(64, 128, 320, 512),
            token_mixers=torch.nn.Identity,
            norm_layers=GroupNorm1NoBias,
        )
    )
    path = tmp_path / 'identityformer_s12_timm.pth'
    torch.save(reference.state_dict(), path)
    model = ours('IdentityFormer', 's12', checkpoint=path)
    path.unlink()  # read (~45 MB)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert_features_equal(
            model(x),
            reference.forward_intermediates(x, intermediates_only=True),
        )


@pytest.mark.parametrize(
    'timm_name,arch',
    [('convmixer_768_32', '768/32'), ('convmixer_1024_20_ks9_p14', '1024/20')],
)
def test_convmixer_trunk_parity_with_timm(timm_name, arch, tmp_path):
    reference = timm_model(timm_name)
    path = tmp_path / f'{timm_name}.pth'
    torch.save(reference.state_dict(), path)
    model = ours('ConvMixer', arch, checkpoint=path)
    path.unlink()  # read (~90 MB)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        trunk = ConvMixerTrunk.forward(model, x)
        torch.testing.assert_close(
            trunk, reference.forward_features(x), rtol=1e-5, atol=1e-5
        )
        outs = model(x)
    assert [o.shape[1] for o in outs] == list(model.out_channels)


def test_poolformer_v1_parity_with_mmpretrain(tmp_path):
    """mmpretrain's PoolFormer, its checkpoint layout and output norms."""
    from mmpretrain.models.backbones import PoolFormer as MMPretrainPoolFormer

    reference = MMPretrainPoolFormer(arch='s12', out_indices=(0, 2, 4, 6))
    randomised(reference)  # (mmpretrain's train() returns None)
    reference.eval()
    state = {f'backbone.{k}': v for k, v in reference.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 512)
    state['head.fc.bias'] = torch.zeros(1000)
    path = tmp_path / 'poolformer-s12_mmpretrain.pth'
    torch.save({'meta': {'epoch': 300}, 'state_dict': state}, path)
    model = MODELS.build(
        dict(
            type='PoolFormer',
            arch='s12',
            init_cfg=dict(type='Pretrained', checkpoint=str(path)),
        )
    )
    model.init_weights()
    path.unlink()  # read (~50 MB)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert_features_equal(model.eval()(x), reference(x))


# --- every format through init_cfg ---------------------------------------


def timm_reference(name):
    """``(native backbone state dict, input, timm's stage features)``."""
    reference = timm_model(name)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        feats = reference.forward_intermediates(x, intermediates_only=True)
    native, _, _ = to_native(reference.state_dict())
    return (
        {k: v for k, v in native.items() if not k.startswith('head.')},
        x,
        feats,
    )


@pytest.fixture(scope='module')
def poolformer_reference():
    return timm_reference('poolformer_s12')


@pytest.fixture(scope='module')
def caformer_reference():
    return timm_reference('caformer_s18')


def test_authors_poolformer_v1_pth_tar(poolformer_reference, tmp_path):
    native, x, feats = poolformer_reference
    state = with_classifier(as_poolformer_v1(native), 512)
    assert detect_format(state) == 'poolformer_v1'
    path = tmp_path / 'poolformer_s12.pth.tar'
    torch.save(state, path)
    model = ours('PoolFormer', 's12', path)
    path.unlink()  # read (~50 MB)
    with torch.no_grad():
        assert_features_equal(model(x), feats)


def test_authors_metaformer_baselines_pth(caformer_reference, tmp_path):
    native, x, feats = caformer_reference
    state = with_classifier(
        as_metaformer_baselines(native), 512, baselines=True
    )
    assert detect_format(state) == 'metaformer_baselines'
    assert state['stages.0.0.mlp.fc1.weight'].dim() == 2
    path = tmp_path / 'caformer_s18.pth'
    torch.save(state, path)
    model = ours('CAFormer', 's18', path)
    path.unlink()  # read (~100 MB)
    with torch.no_grad():
        assert_features_equal(model(x), feats)


def test_randformer_baselines_format_round_trip(tmp_path):
    """RandFormer's frozen matrices come from the checkpoint."""
    torch.manual_seed(3)
    source = randomised(
        MODELS.build(dict(type='RandFormer', arch='s12', out_norm_cfg=None))
    )
    state = as_metaformer_baselines(source.state_dict())
    assert 'stages.2.0.token_mixer.random_matrix' in state
    path = tmp_path / 'randformer_s12.pth'
    torch.save(with_classifier(state, 512, baselines=True), path)
    torch.manual_seed(99)  # a different random draw before loading
    model = ours('RandFormer', 's12', path)
    path.unlink()  # read (~50 MB)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert_features_equal(model(x), source(x))
        # and at a detection-like size, through the resampled matrices
        x = torch.randn(1, 3, 97, 131)
        assert_features_equal(model(x), source(x))


def test_our_format_from_the_converter_and_a_full_detector(
    poolformer_reference, tmp_path
):
    native, x, feats = poolformer_reference
    src = tmp_path / 'poolformer_s12.pth.tar'
    torch.save(with_classifier(as_poolformer_v1(native), 512), src)
    dst = tmp_path / 'poolformer_s12_converted.pth'
    proc = run_tool('convert_checkpoint.py', src, dst)
    src.unlink()  # read (~50 MB)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'poolformer_v1' in proc.stdout and 'classifier' in proc.stdout
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['mmmetaformer_format'] == 1
    assert not any(
        k.startswith(('head.', 'norm.')) for k in converted['state_dict']
    )
    model = ours('PoolFormer', 's12', dst)
    dst.unlink()  # read (~50 MB)
    with torch.no_grad():
        assert_features_equal(model(x), feats)
    # A whole mmdet checkpoint: backbone.* plus neck/head tensors.
    full = {f'backbone.{k}': v for k, v in native.items()}
    full['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 128, 1, 1)
    full['bbox_head.retina_cls.bias'] = torch.zeros(9)
    det = tmp_path / 'retinanet_epoch_12.pth'
    torch.save({'meta': {'epoch': 12}, 'state_dict': full}, det)
    model = ours('PoolFormer', 's12', det)
    det.unlink()  # read (~50 MB)
    with torch.no_grad():
        assert_features_equal(model(x), feats)


def test_output_norms_load_from_our_format_and_are_new_otherwise(
    poolformer_reference, tmp_path
):
    native, _, _ = poolformer_reference
    model = MODELS.build(dict(type='PoolFormer', arch='s12'))
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
    loaded = MODELS.build(
        dict(
            type='PoolFormer',
            arch='s12',
            init_cfg=dict(type='Pretrained', checkpoint=str(path)),
        )
    )
    loaded.init_weights()
    path.unlink()  # read (~50 MB)
    assert torch.all(loaded.out_norms['2'].weight == 3.0)
    # ImageNet weights have no output norms: they keep their init.
    path = tmp_path / 'imagenet.pth'
    torch.save(native, path)
    fresh = MODELS.build(
        dict(
            type='PoolFormer',
            arch='s12',
            init_cfg=dict(type='Pretrained', checkpoint=str(path)),
        )
    )
    fresh.init_weights()
    path.unlink()  # read (~50 MB)
    assert torch.all(fresh.out_norms['2'].weight == 1.0)


# --- errors ----------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nowhere.pth'
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        ours('PoolFormer', 's12', path)


def test_wrong_arch_lists_mismatched_keys(poolformer_reference, tmp_path):
    native, _, _ = poolformer_reference
    path = tmp_path / 's12.pth'
    torch.save(native, path)
    with pytest.raises(CheckpointMismatchError) as err:
        ours('PoolFormer', 's24', path)
    msg = str(err.value)
    assert 'missing in checkpoint' in msg and 'stages.0.blocks.2' in msg
    with pytest.raises(
        CheckpointMismatchError, match='shape or type mismatch'
    ):
        ours('PoolFormer', 'm36', path)
    path.unlink()  # read twice (~50 MB)


def test_unexpected_key_is_reported_not_hidden(poolformer_reference, tmp_path):
    native, _, _ = poolformer_reference
    state = dict(native)
    state['stages.1.blocks.0.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'extra.pth'
    torch.save(state, path)
    with pytest.raises(
        CheckpointMismatchError, match=r'not in the model \(1\).*extra\.weight'
    ):
        ours('PoolFormer', 's12', path)
    path.unlink()  # read (~50 MB)


def test_pickled_objects_are_refused(poolformer_reference, tmp_path):
    """weights_only=True: a checkpoint can never run code."""
    import argparse

    native, _, _ = poolformer_reference
    path = tmp_path / 'with_args.pth.tar'
    torch.save({'state_dict': native, 'args': argparse.Namespace(lr=1)}, path)
    with pytest.raises(RuntimeError, match='refused'):
        ours('PoolFormer', 's12', path)
    path.unlink()  # read (~50 MB)


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
