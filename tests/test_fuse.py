"""The deploy switch (``switch_to_deploy`` / ``core.fuse.fuse_trunk``).

Contracts, for every family (tiny archs, odd input sizes so the borders of
every padded conv and pool matter):

* the fused model computes the unfused one: max abs difference <= 1e-5 of
  the largest output magnitude, in fp32, channels-last or not;
* what is folded is gone: no norm affine, StarReLU or scale module is left
  where the docstring of ``core/fuse.py`` says it folds;
* fused modules never modify a tensor after a module returned it (hooks
  see final values), and trace without graph breaks;
* it is a one-way switch on one instance: the original weights still load
  into a fresh model, the fused one refuses weights and training.

Every parameter is perturbed first so layer scales, norm affines (with
biases where a family has them), StarReLU and BatchNorm statistics are
not the identity they are at init.
"""
import copy
import io

import pytest
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401
from mmmetaformer.models.core import (GroupNorm1, LayerNorm2d, Scale,
                                      StarReLU)
from mmmetaformer.models.core.fuse import (FusedMetaFormerBlock,
                                           GenericResidual, fuse_trunk)
from mmmetaformer.registry import MODELS

TINY = dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 64])
MODELS_UNDER_TEST = dict(
    PoolFormer=dict(arch=TINY),
    PoolFormerV2=dict(arch=TINY),
    IdentityFormer=dict(arch=TINY),
    RandFormer=dict(arch=TINY),
    ConvFormer=dict(arch=TINY),
    CAFormer=dict(arch=TINY),
    # norms *with* biases and layer scales next to SepConv, pooling,
    # attention, RandomMixing and a StarReLU MLP with biases: every fold
    # with a shift term, every fused module kind in one model
    MetaFormer=dict(arch=dict(
        TINY, token_mixer_cfg=[dict(type='SepConv'), dict(type='Pooling'),
                               dict(type='Attention', head_dim=16),
                               dict(type='RandomMixing', num_tokens=4)],
        norm_cfg=[dict(type='LayerNorm2d'), dict(type='GroupNorm1'),
                  dict(type='LayerNorm2d'), dict(type='GroupNorm1')],
        mlp_act_cfg=dict(type='StarReLU'), mlp_bias=True,
        stem_norm_cfg=dict(type='LayerNorm2d', bias=False),
        downsample_norm_cfg=dict(type='LayerNorm2d', bias=False),
        layer_scale_init_value=1.0, res_scale_init_value=1.0)),
    ConvMixerReLU=dict(
        type='ConvMixer',
        arch=dict(dim=32, depth=4, kernel_size=5, patch_size=7,
                  act_cfg=dict(type='ReLU')),
        adapter_norm_cfg=dict(type='GN', num_groups=4)),
    ConvMixerGELU=dict(
        type='ConvMixer',
        arch=dict(dim=32, depth=2, kernel_size=9, patch_size=14,
                  act_cfg=dict(type='GELU')),
        adapter_norm_cfg=dict(type='GN', num_groups=4)),
)
NAMES = list(MODELS_UNDER_TEST)
SIZE = (61, 83)  # odd, not a multiple of any stride
REL_TOL = 1e-5


def build(name):
    torch.manual_seed(0)
    cfg = dict(MODELS_UNDER_TEST[name])
    cfg.setdefault('type', name)
    model = MODELS.build(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:  # norm affines, scales, StarReLU s and b
                p.copy_(1.0 + 0.5 * noise if param_name.endswith(
                    ('weight', 'scale')) else 0.3 * noise)
            else:
                p.add_(0.02 * noise)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def rel_diff(outputs, reference):
    diff = max((a - b).abs().max().item() for a, b in zip(outputs, reference))
    return diff / max(b.abs().max().item() for b in reference)


@pytest.fixture(scope='module')
def image():
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))


# NCHW memory (channels_last=False) takes other code paths in the 1x1
# convs only: one family per mixer kind that has them
@pytest.mark.parametrize('name, channels_last', [(n, True) for n in NAMES] + [
    (n, False) for n in ('ConvFormer', 'CAFormer', 'PoolFormer',
                         'ConvMixerReLU')])
def test_fused_equals_unfused(name, channels_last, image):
    model = build(name)
    with torch.no_grad():
        expected = model(image)
    fused = copy.deepcopy(model).switch_to_deploy(channels_last=channels_last)
    assert fused.deployed and not model.deployed
    with torch.no_grad():
        got = fused(image)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert rel_diff(got, expected) <= REL_TOL
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last)


# modules that may stay after fusing, by family: everything else of these
# types was folded (the stem norm normalises the stem conv's output;
# RandomMixing keeps its norm; the output norms are not part of a trunk)
AFFINE_TYPES = (GroupNorm1, LayerNorm2d, StarReLU, Scale, nn.BatchNorm2d)
KEPT = dict(
    PoolFormer=set(),
    PoolFormerV2={'stem.norm'},
    IdentityFormer={'stem.norm'},
    RandFormer={'stem.norm', 'stages.2.blocks.0.mixer_residual.norm',
                'stages.2.blocks.1.mixer_residual.norm',
                'stages.3.blocks.0.mixer_residual.norm'},
    ConvFormer={'stem.norm'},
    CAFormer={'stem.norm'},
    MetaFormer={'stem.norm', 'stages.3.blocks.0.mixer_residual.norm'},
    ConvMixerReLU={'stem.module.2'},
    ConvMixerGELU={'stem.module.2'},
)


@pytest.mark.parametrize('name', NAMES)
def test_folded_affines_are_gone(name):
    fused = build(name).switch_to_deploy()
    left = {
        n for n, m in fused.named_modules()
        if isinstance(m, AFFINE_TYPES) and not n.startswith(
            ('out_norms', 'adapter'))
    }
    assert left == KEPT[name]
    if name.startswith('ConvMixer'):
        return
    blocks = [b for stage in fused.stages for b in stage.blocks]
    assert blocks and all(isinstance(b, FusedMetaFormerBlock) for b in blocks)
    generic = [n for n, m in fused.named_modules()
               if isinstance(m, GenericResidual)]
    assert generic == sorted(k.rsplit('.', 1)[0] for k in KEPT[name]
                             if 'mixer_residual' in k)


def test_bias_that_cannot_fold_exactly_is_kept():
    """A downsampling norm bias would be wrong at the conv's borders."""
    arch = dict(TINY, token_mixer_cfg=dict(type='IdentityMixer'),
                norm_cfg=dict(type='GroupNorm1'),
                downsample_norm_cfg=dict(type='LayerNorm2d', bias=True))
    torch.manual_seed(0)
    model = MODELS.build(dict(type='MetaFormer', arch=arch)).eval()
    with torch.no_grad():
        for stage in model.stages[1:]:
            stage.downsample.norm.bias.normal_()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x)
        fused = model.switch_to_deploy()
        assert rel_diff(fused(x), expected) <= REL_TOL
    assert all(isinstance(s.downsample.norm, LayerNorm2d)
               for s in fused.stages[1:])


@pytest.mark.parametrize('name', ['MetaFormer', 'ConvMixerGELU'])
def test_hooks_see_final_values(name, image):
    fused = build(name).switch_to_deploy()
    seen = []

    def record(module, args, output):
        for t in output if isinstance(output, (list, tuple)) else [output]:
            seen.append((module, t, t.clone()))

    handles = [m.register_forward_hook(record) for m in fused.modules()]
    with torch.no_grad():
        fused(image)
    for h in handles:
        h.remove()
    assert len({id(m) for m, _, _ in seen}) > 10
    changed = [type(m).__name__ for m, t, copy_ in seen
               if not torch.equal(t, copy_)]
    assert not changed


# every fused module kind: SepConv, pooling, attention, the generic
# residual (RandomMixing) and the StarReLU MLP; the GELU MLP; ConvMixer
@pytest.mark.parametrize('name', ['MetaFormer', 'PoolFormer',
                                  'ConvMixerGELU'])
def test_fused_traces_without_graph_breaks(name, image):
    torch._dynamo.reset()
    fused = build(name).switch_to_deploy()
    with torch.no_grad():
        explained = torch._dynamo.explain(fused)(image)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons


def test_fused_exports_to_onnx_with_dynamic_size(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = build('CAFormer')
    fused = copy.deepcopy(model).switch_to_deploy()
    buffer = io.BytesIO()
    names = [f'out{i}' for i in range(4)]
    torch.onnx.export(
        fused, (torch.randn(1, 3, 64, 96), ), buffer, opset_version=17,
        input_names=['image'], output_names=names,
        dynamic_axes=dict(image={2: 'h', 3: 'w'},
                          **{n: {2: f'{n}h', 3: f'{n}w'} for n in names}))
    session = ort.InferenceSession(buffer.getvalue(),
                                   providers=['CPUExecutionProvider'])
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x)
    got = [torch.from_numpy(o) for o in session.run(None, dict(image=x.numpy()))]
    assert rel_diff(got, expected) <= 1e-5


def test_one_way_switch_keeps_the_original_weights_loadable(tmp_path):
    model = build('ConvFormer')
    path = tmp_path / 'unfused.pth'
    torch.save(model.state_dict(), path)
    fused = copy.deepcopy(model).switch_to_deploy()
    assert fused is not model and fused.switch_to_deploy is not None

    fresh = MODELS.build(dict(type='ConvFormer', arch=TINY)).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert rel_diff(fresh(x), model(x)) == 0
    # the unfused model converts and fuses again as usual
    again = fresh.switch_to_deploy()
    with torch.no_grad():
        assert rel_diff(again(x), model(x)) <= REL_TOL

    with pytest.raises(RuntimeError, match='fused for deployment'):
        fused.load_state_dict(torch.load(path, weights_only=True))
    with pytest.raises(RuntimeError, match='inference-only'):
        fused.train()
    with pytest.raises(RuntimeError, match='already fused'):
        fused.switch_to_deploy()
    fused.eval()  # eval stays allowed


def test_fuse_trunk_rejects_other_modules():
    with pytest.raises(TypeError, match='MetaFormerTrunk or ConvMixerTrunk'):
        fuse_trunk(nn.Conv2d(3, 3, 1))


def test_core_fused_block_refuses_training_mode():
    from mmmetaformer.models.core import MetaFormerTrunk
    from mmmetaformer.models.core.mixers import Pooling
    trunk = MetaFormerTrunk([1, 1, 1, 1], [8, 8, 16, 16], Pooling,
                            GroupNorm1)
    fuse_trunk(trunk)
    trunk.train()
    with pytest.raises(RuntimeError, match='eval mode only'):
        trunk(torch.randn(1, 3, 64, 64))
