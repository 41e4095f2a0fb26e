"""The deploy folds (``switch_to_deploy`` per module; ``core/fuse.py``).

Contracts, for every family (tiny archs, odd input sizes so the borders of
every padded conv and pool matter):

* the folded model computes the unfused one up to fp32 rounding
  (``tests/tolerance.py``: the tolerance of the model's longest dot
  product and number of layers), in either memory layout;
* what is folded is gone: the norm affines, layer scales and StarReLU
  parameters that ``core/fuse.py`` folds are ``None`` / ``nn.Identity`` /
  frozen, block by block;
* a model built with ``deploy=True`` has the folded model's keys and
  loads its checkpoint; a user's mixer without a fold runs unfused, with
  a log line;
* folded modules never modify a tensor after a module returned it (hooks
  see final values), trace without graph breaks and export to ONNX.

Every parameter is perturbed first so layer scales, norm affines (with
biases where a family has them), StarReLU and BatchNorm statistics are
not the identity they are at init.
"""

import copy
import logging

import pytest
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401
from mmmetaformer.export import export_onnx
from mmmetaformer.models.core import (
    IdentityMixer,
    MetaFormerBlock,
    Pooling,
    RandomMixing,
    Scale,
    StarReLU,
)
from mmmetaformer.registry import MODELS

from .tolerance import assert_close, model_rounding

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
    MetaFormer=dict(
        arch=dict(
            TINY,
            token_mixer_cfg=[
                dict(type='SepConv'),
                dict(type='Pooling'),
                dict(type='Attention', head_dim=16),
                dict(type='RandomMixing', num_tokens=4),
            ],
            norm_cfg=[
                dict(type='LayerNorm2d'),
                dict(type='GroupNorm1'),
                dict(type='LayerNorm2d'),
                dict(type='GroupNorm1'),
            ],
            mlp_act_cfg=dict(type='StarReLU'),
            mlp_bias=True,
            stem_norm_cfg=dict(type='LayerNorm2d', bias=False),
            downsample_norm_cfg=dict(type='LayerNorm2d', bias=False),
            layer_scale_init_value=1.0,
            res_scale_init_value=1.0,
        )
    ),
    ConvMixerReLU=dict(
        type='ConvMixer',
        arch=dict(
            dim=32,
            depth=4,
            kernel_size=5,
            patch_size=7,
            act_cfg=dict(type='ReLU'),
        ),
        adapter_norm_cfg=dict(type='GN', num_groups=4),
    ),
    ConvMixerGELU=dict(
        type='ConvMixer',
        arch=dict(
            dim=32,
            depth=2,
            kernel_size=9,
            patch_size=14,
            act_cfg=dict(type='GELU'),
        ),
        adapter_norm_cfg=dict(type='GN', num_groups=4),
    ),
)
NAMES = list(MODELS_UNDER_TEST)
SIZE = (61, 83)  # odd, not a multiple of any stride


def build(name, **kwargs):
    torch.manual_seed(0)
    cfg = dict(MODELS_UNDER_TEST[name], **kwargs)
    cfg.setdefault('type', name)
    model = MODELS.build(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:  # norm affines, scales, StarReLU s and b
                p.copy_(
                    1.0 + 0.5 * noise
                    if param_name.endswith(('weight', 'scale'))
                    else 0.3 * noise
                )
            else:
                p.add_(0.02 * noise)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def assert_folded_close(outputs, reference, model):
    """The folded model's outputs are the unfused ``model``'s up to the
    rounding of another summation order."""
    assert len(outputs) == len(reference)
    for a, b in zip(outputs, reference):
        assert_close(a, b, *model_rounding(model))


def rel_diff(outputs, reference):
    diff = max((a - b).abs().max().item() for a, b in zip(outputs, reference))
    return diff / max(b.abs().max().item() for b in reference)


@pytest.fixture(scope='module')
def image():
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('channels_last', [True, False])
def test_folded_equals_unfused(name, channels_last, image):
    model = build(name, channels_last=channels_last)
    with torch.no_grad():
        expected = model(image)
    fused = copy.deepcopy(model).switch_to_deploy()
    assert fused.deploy and not model.deploy
    with torch.no_grad():
        got = fused(image)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(g.is_contiguous() for g in got)
    assert_folded_close(got, expected, model)


def folded_parts(block):
    """What a folded block must no longer have, by its mixer."""
    mixer = block.token_mixer
    if type(mixer) is RandomMixing:
        branch1 = []  # nothing exact to fold
    elif type(mixer) is Pooling:
        branch1 = [block.norm1.weight, block.norm1.bias]
    elif type(mixer) is IdentityMixer:
        branch1 = [block.layer_scale1]
    else:
        branch1 = [block.norm1.weight, block.norm1.bias, block.layer_scale1]
    if type(mixer) is not Pooling and type(mixer) is not RandomMixing:
        assert isinstance(block.layer_scale1, nn.Identity)
    branch2 = [block.norm2.weight, block.norm2.bias]
    assert isinstance(block.layer_scale2, nn.Identity)
    return [
        p
        for p in branch1 + branch2
        if p is not None and not isinstance(p, nn.Identity)
    ]


@pytest.mark.parametrize(
    'name', [n for n in NAMES if not n.startswith('ConvMixer')]
)
def test_folded_affines_are_gone(name):
    fused = build(name).switch_to_deploy()
    blocks = [m for m in fused.modules() if isinstance(m, MetaFormerBlock)]
    assert blocks
    for block in blocks:
        assert folded_parts(block) == []
        assert isinstance(block.drop_path1, nn.Identity)
        for act in (block.mlp.act, getattr(block.token_mixer, 'act1', None)):
            if isinstance(act, StarReLU):
                assert not act.scale.requires_grad and float(act.scale) == 1
    left = [
        n
        for n, m in fused.named_modules()
        if isinstance(m, Scale)
        and not n.endswith(('res_scale1', 'res_scale2'))
    ]
    # only pooling's folded scale (norm weight x layer scale) and the
    # unfoldable RandomMixing branch keep a layer scale
    for module_name in left:
        block = fused.get_submodule(module_name.rsplit('.', 1)[0])
        assert type(block.token_mixer) in (Pooling, RandomMixing)


def test_convmixer_batchnorm_shift_folds_into_the_pointwise_conv(image):
    model = build('ConvMixerGELU')
    fused = copy.deepcopy(model).switch_to_deploy()
    for layer in fused.blocks:
        assert isinstance(layer[0].fn[2], Scale)
        assert layer[1].bias is not None
    with torch.no_grad():
        assert_folded_close(fused(image), model(image), model)


@pytest.mark.parametrize(
    'name', ['MetaFormer', 'PoolFormer', 'CAFormer', 'ConvMixerReLU']
)
def test_deploy_build_loads_a_folded_checkpoint(name, image, tmp_path):
    fused = build(name).switch_to_deploy()
    path = tmp_path / 'folded.pth'
    torch.save(fused.state_dict(), path)
    cfg = dict(MODELS_UNDER_TEST[name], deploy=True)
    cfg.setdefault('type', name)
    fresh = MODELS.build(cfg).eval()
    assert fresh.deploy
    assert fresh.state_dict().keys() == fused.state_dict().keys()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        assert rel_diff(fresh(image), fused(image)) == 0
    # the unfused checkpoint does not fit a folded model
    unfused = build(name)
    with pytest.raises(RuntimeError, match='Missing key|Unexpected key'):
        fresh.load_state_dict(unfused.state_dict())
    # through init_cfg, as a config loads it
    again = MODELS.build(
        dict(
            cfg,
            init_cfg=dict(
                type='Pretrained', checkpoint=str(path), format='mmmetaformer'
            ),
        )
    )
    again.init_weights()
    with torch.no_grad():
        assert rel_diff(again.eval()(image), fused(image)) == 0


class PlainMixer(nn.Module):
    """A user's mixer with no fold."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.proj(x) - x


def test_user_mixer_without_a_fold_runs_unfused_with_a_log_line(image, caplog):
    # registered as a user would; mmengine's registries cannot unregister
    MODELS.register_module(module=PlainMixer, force=True)
    model = MODELS.build(
        dict(
            type='MetaFormer',
            arch=dict(
                TINY,
                token_mixer_cfg=dict(type='PlainMixer'),
                norm_cfg=dict(type='GroupNorm1'),
                layer_scale_init_value=1.0,
            ),
        )
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
        expected = model(image)
    with caplog.at_level(logging.WARNING):
        model.switch_to_deploy()
    assert 'PlainMixer has no fold_branch' in caplog.text
    block = model.stages[0].blocks[0]
    assert isinstance(block.layer_scale1, Scale)
    assert block.norm1.weight is not None  # the mixer's norm stays
    assert block.norm2.weight is None  # the MLP still folds
    with torch.no_grad():
        assert_folded_close(model(image), expected, model)


def test_bias_that_cannot_fold_exactly_is_kept():
    """A downsampling norm bias would be wrong at the conv's borders."""
    arch = dict(
        TINY,
        token_mixer_cfg=dict(type='IdentityMixer'),
        norm_cfg=dict(type='GroupNorm1'),
        downsample_norm_cfg=dict(type='LayerNorm2d', bias=True),
    )
    torch.manual_seed(0)
    model = MODELS.build(dict(type='MetaFormer', arch=arch)).eval()
    with torch.no_grad():
        for stage in model.stages[1:]:
            stage.downsample.norm.bias.normal_()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x)
        fused = model.switch_to_deploy()
        assert_folded_close(fused(x), expected, fused)
    assert all(s.downsample.norm.weight is not None for s in fused.stages[1:])


def test_switch_is_idempotent_and_keeps_the_original_loadable(image):
    model = build('ConvFormer')
    state = copy.deepcopy(model.state_dict())
    fused = copy.deepcopy(model).switch_to_deploy()
    with torch.no_grad():
        once = fused(image)
        assert rel_diff(fused.switch_to_deploy()(image), once) == 0
    fresh = MODELS.build(dict(type='ConvFormer', arch=TINY)).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert rel_diff(fresh(image), model(image)) == 0


@pytest.mark.parametrize('value', ['yes', 1, None])
def test_deploy_must_be_a_bool(value):
    with pytest.raises(
        ValueError, match=f'deploy={value!r} is invalid; valid: True, False'
    ):
        MODELS.build(dict(type='PoolFormer', arch=TINY, deploy=value))


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
    changed = [
        type(m).__name__ for m, t, copy_ in seen if not torch.equal(t, copy_)
    ]
    assert not changed


# every fused module kind: SepConv, pooling, attention, the generic
# residual (RandomMixing) and the StarReLU MLP; the GELU MLP; ConvMixer
@pytest.mark.parametrize('name', ['MetaFormer', 'PoolFormer', 'ConvMixerGELU'])
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
    path = tmp_path / 'fused.onnx'
    export_onnx(fused.eval(), path, torch.randn(1, 3, 64, 96))
    session = ort.InferenceSession(
        str(path), providers=['CPUExecutionProvider']
    )
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x)
    got = [
        torch.from_numpy(o) for o in session.run(None, dict(image=x.numpy()))
    ]
    assert_folded_close(got, expected, model)
