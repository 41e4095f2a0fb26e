"""Contracts every registered backbone arch must meet.

Construction and output shapes run for every arch on the ``meta`` device
(shapes without arithmetic), so the big archs stay cheap. Contracts whose
code path depends only on the family's layers (gradients, checkpointing,
``out_indices``, freezing) run with real arithmetic on each family's
smallest arch: the bigger archs of a family differ only in depths and
dims, which the meta-device shapes cover.
"""

import math

import pytest
import torch

import mmmetaformer  # noqa: F401
from mmmetaformer.models import (
    CAFormer,
    ConvMixer,
    IdentityFormer,
    MetaFormer,
    PoolFormer,
    RandFormer,
)
from mmmetaformer.models.core import RandomMixing, stage_output_sizes
from mmmetaformer.registry import MODELS
from tests.helpers import family_archs, smallest_archs
from tests.tolerance import (
    assert_close,
    assert_gradients_close,
    model_rounding,
)

ALL_ARCHS = [(name, arch) for _, name, arch in family_archs()]
ARCH_IDS = [f'{c}-{a}' for c, a in ALL_ARCHS]
SMALL_ARCHS = [(name, arch) for _, name, arch in smallest_archs()]
SMALL_IDS = [f'{c}-{a}' for c, a in SMALL_ARCHS]
# Each family's layers at a fraction of the cost, for the contracts about
# the wrapper's mechanics (checkpointing, out_indices, freezing): an arch
# dict only needs what differs from the family (CAFormer: dims divisible by
# its head size 32; ConvMixer: adapter channels divisible by GN's 32 groups).
TINY_CONVMIXER = dict(
    dim=128, depth=4, kernel_size=3, patch_size=7, act_cfg=dict(type='GELU')
)
TINY_ARCHS = [
    (
        name,
        TINY_CONVMIXER
        if name == 'ConvMixer'
        else dict(depths=[1, 1, 2, 1], dims=[32, 64, 96, 128]),
    )
    for name, _ in SMALL_ARCHS
]
TINY_IDS = [f'{c}-tiny' for c, _ in TINY_ARCHS]


def build(cls_name, arch, **kwargs):
    return MODELS.build(dict(type=cls_name, arch=arch, **kwargs))


def expected_dims(model):
    if isinstance(model, ConvMixer):
        return list(model.adapter_channels)
    return list(model.arch_settings['dims'])


def test_stage_output_sizes():
    """The README's sizes: stem conv 7x7/4 (pad 2), then 3x3/2 (pad 1)."""
    assert stage_output_sizes(224, 224) == [
        (56, 56),
        (28, 28),
        (14, 14),
        (7, 7),
    ]
    assert stage_output_sizes(97, 131) == [(24, 33), (12, 17), (6, 9), (3, 5)]
    assert stage_output_sizes(32, 33) == [(8, 8), (4, 4), (2, 2), (1, 1)]
    for h in range(32, 300, 7):
        first = math.floor((h - 3) / 4) + 1
        sizes = [first]
        for _ in range(3):
            sizes.append(math.ceil(sizes[-1] / 2))
        assert [s for s, _ in stage_output_sizes(h, 64)] == sizes, h


@pytest.mark.parametrize('cls_name,arch', ALL_ARCHS, ids=ARCH_IDS)
def test_shapes_at_required_sizes(cls_name, arch):
    """Channels and strides at 224x224, 256x320 and 97x131 (meta device)."""
    with torch.device('meta'):
        model = build(cls_name, arch).eval()
    dims = expected_dims(model)
    assert model.out_channels == tuple(dims)
    assert model.out_strides == (4, 8, 16, 32)
    for size in [(224, 224), (256, 320), (97, 131)]:
        outs = model(torch.empty(1, 3, *size, device='meta'))
        assert isinstance(outs, tuple) and len(outs) == 4
        for out, c, hw in zip(outs, dims, stage_output_sizes(*size)):
            assert tuple(out.shape) == (1, c, *hw), (size, out.shape)


@pytest.mark.parametrize('cls_name,arch', SMALL_ARCHS, ids=SMALL_IDS)
def test_forward_backward_every_parameter_gets_a_gradient(cls_name, arch):
    torch.manual_seed(0)
    model = build(cls_name, arch)
    model.train()
    x = torch.randn(2, 3, 65, 97)
    outs = model(x)
    for out, c, hw in zip(
        outs, expected_dims(model), stage_output_sizes(65, 97)
    ):
        assert tuple(out.shape) == (2, c, *hw)
        assert torch.isfinite(out).all()
    sum(o.float().pow(2).mean() for o in outs).backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not no_grad, no_grad[:10]
    zero = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad.abs().sum() == 0
    ]
    assert not zero, zero[:10]


def frozen_prefixes(model, frozen_stages):
    """State-dict prefixes that ``frozen_stages`` must freeze, from the
    documented rule, not from the model's own ``stage_modules``: the stem,
    then stage ``i`` of a MetaFormer (its downsampling included) or the
    ``i``-th group of ``ceil(depth / 4)`` mixer layers of ConvMixer."""
    if frozen_stages < 0:
        return ()
    if isinstance(model, ConvMixer):
        group = math.ceil(model.arch_settings['depth'] / 4)
        return (
            'stem.',
            *(f'blocks.{j}.' for j in range(group * frozen_stages)),
        )
    return ('stem.', *(f'stages.{i}.' for i in range(frozen_stages)))


@pytest.mark.parametrize('cls_name,arch', SMALL_ARCHS, ids=SMALL_IDS)
def test_frozen_stages_freeze_exactly_the_documented_parts(cls_name, arch):
    """For every k: the parameters right after construction, and parameters
    and train/eval modes after ``train()``. Output norms and ConvMixer's
    adapter (new layers) never freeze."""
    for frozen_stages in (-1, 0, 1, 2, 3, 4):
        with torch.device('meta'):
            model = build(cls_name, arch, frozen_stages=frozen_stages)
        prefixes = frozen_prefixes(model, frozen_stages)
        expected = [
            n for n, _ in model.named_parameters() if n.startswith(prefixes)
        ]
        for when in ('built', 'train()'):
            if when == 'train()':
                model.train()
            frozen = [
                n for n, p in model.named_parameters() if not p.requires_grad
            ]
            assert frozen == expected, (
                frozen_stages,
                when,
                frozen[-3:],
                expected[-3:],
            )
        for name, module in model.named_modules():
            if name:
                assert module.training != (name + '.').startswith(prefixes), (
                    frozen_stages,
                    name,
                )
        assert frozen_stages < 0 or expected  # the rule froze something
    assert not any(n.startswith(('out_norms.', 'adapter.')) for n in frozen)


def test_frozen_stages_survive_a_training_step():
    """ConvMixer (BatchNorm): frozen weights and BN statistics stay put
    through train(), forward, backward and an optimiser step."""
    torch.manual_seed(0)
    model = ConvMixer(
        arch=dict(TINY_CONVMIXER, depth=8), frozen_stages=2
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1
    )
    sum(o.pow(2).mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    prefixes = frozen_prefixes(model, 2)
    after = model.state_dict()
    for key, value in before.items():
        unchanged = torch.equal(value, after[key])
        if key.startswith(prefixes):
            assert unchanged, key
        elif key.endswith(('running_mean', 'weight')) and key.startswith(
            'blocks.'
        ):
            assert not unchanged, key  # the rest does train


@pytest.mark.parametrize('cls_name,arch', TINY_ARCHS, ids=TINY_IDS)
def test_with_cp_same_outputs_and_gradients(cls_name, arch):
    kwargs = dict(drop_path_rate=0.2) if cls_name != 'ConvMixer' else {}
    torch.manual_seed(0)
    plain = build(cls_name, arch, **kwargs)
    ckpt = build(cls_name, arch, with_cp=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(1)
        outs = model(x)
        sum(o.sum() for o in outs).backward()
        results.append(
            (outs, {n: p.grad.clone() for n, p in model.named_parameters()})
        )
    rounding = model_rounding(plain)
    for a, b in zip(results[1][0], results[0][0]):
        assert_close(a, b, *rounding)
    assert_gradients_close(results[1][1], results[0][1], *rounding)


@pytest.mark.parametrize('cls_name,arch', TINY_ARCHS, ids=TINY_IDS)
@pytest.mark.parametrize('out_indices', [(0,), (1, 3), (2,), (0, 1, 2)])
def test_out_indices_subsets(cls_name, arch, out_indices):
    model = build(cls_name, arch, out_indices=out_indices).train()
    dims = expected_dims(model)
    assert model.out_channels == tuple(dims[i] for i in out_indices)
    assert sorted(model.out_norms.keys()) == [str(i) for i in out_indices]
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [dims[i] for i in out_indices]
    sum(o.sum() for o in outs).backward()
    # Parts after the last output never run and hold no trainable params,
    # so DDP finds no unused parameters.
    unused = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert not unused, unused[:5]


def test_out_norms_default_and_none():
    model = PoolFormer(arch='s12')
    assert all(
        isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1
        for m in model.out_norms.values()
    )
    bare = PoolFormer(arch='s12', out_norm_cfg=None)
    assert not list(bare.out_norms.parameters())
    assert not any(k.startswith('out_norms') for k in bare.state_dict())


def test_norm_eval_keeps_batchnorm_in_eval():
    model = ConvMixer(arch='768/32', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bns[0].running_mean)
    assert model.adapter.training


def test_family_presets_equal_the_generic_metaformer():
    torch.manual_seed(0)
    preset = CAFormer(arch='s18')
    generic = MetaFormer(arch='caformer_s18')
    assert list(preset.state_dict()) == list(generic.state_dict())
    generic.load_state_dict(preset.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(preset.eval()(x), generic.eval()(x)):
        torch.testing.assert_close(a, b)


def test_starrelu_everywhere_in_baselines():
    model = CAFormer(arch='s18')
    acts = {type(b.mlp.act).__name__ for s in model.stages for b in s.blocks}
    assert acts == {'StarReLU'}
    assert type(model.stages[0].blocks[0].token_mixer).__name__ == 'SepConv'
    assert type(model.stages[3].blocks[0].token_mixer).__name__ == 'Attention'


class TestBadArguments:
    def test_unknown_arch_lists_valid_ones(self):
        with pytest.raises(ValueError) as err:
            PoolFormer(arch='s13')
        msg = str(err.value)
        assert "'s13'" in msg and all(
            a in msg for a in ('s12', 's24', 's36', 'm36', 'm48')
        )
        with pytest.raises(ValueError, match="'s12'.*s18, s36, m36, b36"):
            CAFormer(arch='s12')
        with pytest.raises(ValueError, match='768/32, 1024/20, 1536/20'):
            ConvMixer(arch='512/12')

    def test_unknown_kwarg_is_rejected_with_valid_ones(self):
        with pytest.raises(
            TypeError,
            match=r"\['frozen_stage'\].*"
            'frozen_stages',
        ):
            PoolFormer(arch='s12', frozen_stage=1)
        with pytest.raises(TypeError, match='adapter_channels'):
            ConvMixer(arch='768/32', bogus=1)

    def test_arch_dict_keys_are_checked(self):
        with pytest.raises(ValueError, match=r"\['depth'\].*valid keys"):
            MetaFormer(arch=dict(depth=[1, 1, 1, 1], dims=[8, 8, 8, 8]))
        with pytest.raises(ValueError, match='required keys'):
            MetaFormer(arch=dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]))
        with pytest.raises(
            ValueError, match='token_mixer_cfg has 3 entries.*4 stages'
        ):
            PoolFormer(
                arch=dict(
                    depths=[1, 1, 1, 1],
                    dims=[8, 16, 32, 64],
                    token_mixer_cfg=[dict(type='Pooling')] * 3,
                )
            )
        with pytest.raises(ValueError, match='4 depths and 4 dims'):
            PoolFormer(arch=dict(depths=[1, 1, 1], dims=[8, 16, 32]))

    @pytest.mark.parametrize('out_indices', [(4,), (-1,), (), (1, 1)])
    def test_out_indices(self, out_indices):
        with pytest.raises(ValueError, match='out_indices'):
            PoolFormer(arch='s12', out_indices=out_indices)

    @pytest.mark.parametrize('frozen_stages', [-2, 5, 1.5])
    def test_frozen_stages(self, frozen_stages):
        with pytest.raises(ValueError, match='frozen_stages'):
            PoolFormer(arch='s12', frozen_stages=frozen_stages)

    def test_wrong_input_channels(self):
        model = PoolFormer(arch='s12', in_channels=4)
        assert model(torch.randn(1, 4, 64, 64))[0].shape[1] == 64
        with pytest.raises(RuntimeError, match='4'):
            model(torch.randn(1, 3, 64, 64))

    def test_bad_init_cfg(self):
        with pytest.raises(ValueError, match=r"\['checkpoints'\]"):
            PoolFormer(
                arch='s12',
                init_cfg=dict(type='Pretrained', checkpoints='x.pth'),
            )
        with pytest.raises(ValueError, match="format 'pth'.*timm"):
            PoolFormer(
                arch='s12',
                init_cfg=dict(
                    type='Pretrained', checkpoint='x.pth', format='pth'
                ),
            )

    def test_bad_drop_path_and_mixer_dims(self):
        with pytest.raises(ValueError, match='drop_path_rate'):
            PoolFormer(arch='s12', drop_path_rate=1.5)
        with pytest.raises(ValueError, match='head_dim 32'):
            CAFormer(arch=dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 70]))


class TestRandomMixing:
    def test_trained_grid_uses_the_matrix_unchanged(self):
        mixer = RandomMixing(8, num_tokens=196)
        assert mixer.resampled_matrix((14, 14)) is mixer.random_matrix
        x = torch.randn(2, 8, 14, 14)
        expected = torch.einsum(
            'mn,bcn->bcm', mixer.random_matrix, x.flatten(2)
        ).view_as(x)
        torch.testing.assert_close(mixer(x), expected)

    @pytest.mark.parametrize('grid', [(7, 7), (20, 31), (5, 40), (1, 1)])
    def test_other_grids_are_row_stochastic_and_mix_all_tokens(self, grid):
        mixer = RandomMixing(8, num_tokens=196)
        matrix = mixer.resampled_matrix(grid)
        n = grid[0] * grid[1]
        assert matrix.shape == (n, n)
        assert (matrix > 0).all()
        torch.testing.assert_close(matrix.sum(1), torch.ones(n))
        # A constant input stays constant: rows are averages.
        x = torch.full((1, 8, *grid), 3.0)
        torch.testing.assert_close(mixer(x), x)

    def test_deterministic_and_frozen(self):
        mixer = RandomMixing(8, num_tokens=49)
        x = torch.randn(1, 8, 11, 13)
        torch.testing.assert_close(mixer(x), mixer(x), rtol=0, atol=0)
        assert not list(mixer.parameters())
        assert 'random_matrix' in mixer.state_dict()
        # A fresh module given the same matrix gives the same output.
        other = RandomMixing(8, num_tokens=49)
        other.load_state_dict(mixer.state_dict())
        torch.testing.assert_close(other(x), mixer(x), rtol=0, atol=0)

    def test_randformer_matrix_is_never_trained(self):
        model = RandFormer(arch='s12')
        names = [n for n, _ in model.named_parameters()]
        assert not any('random_matrix' in n for n in names)
        keys = [k for k in model.state_dict() if 'random_matrix' in k]
        assert len(keys) == 6 + 2  # stage 3 (6 blocks) and 4 (2 blocks)

    def test_bad_token_count(self):
        with pytest.raises(ValueError, match='square.*195'):
            RandomMixing(8, num_tokens=195)


def test_identityformer_has_no_mixing_parameters():
    model = IdentityFormer(arch='s12')
    assert not any('token_mixer' in n for n, _ in model.named_parameters())


@pytest.mark.parametrize(
    'head',
    [
        dict(
            type='PSAHead',
            mask_size=(15, 15),
            psa_type='bi-direction',
            compact=False,
            shrink_factor=2,
            normalization_factor=1.0,
            psa_softmax=True,
        ),
        dict(type='DAHead', pam_channels=16),
        dict(
            type='NLHead',
            dropout_ratio=0.1,
            reduction=2,
            use_scale=True,
            mode='embedded_gaussian',
        ),
    ],
    ids=['PSAHead', 'DAHead', 'NLHead'],
)
@pytest.mark.parametrize('channels_last', [None, True])
def test_stock_mmseg_heads_take_the_outputs(head, channels_last):
    """Heads that ``view`` their input (PSANet) get contiguous NCHW maps,
    whatever the layout inside the backbone."""
    from mmseg.registry import MODELS as SEG_MODELS

    backbone = build(
        'ConvFormer',
        dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 64]),
        channels_last=channels_last,
    ).eval()
    outs = backbone(torch.randn(1, 3, 256, 256))  # stage 3: 8x8
    assert all(o.is_contiguous() for o in outs)
    decode = SEG_MODELS.build(
        dict(
            head,
            in_channels=64,
            in_index=3,
            channels=32,
            num_classes=3,
            norm_cfg=dict(type='BN'),
            align_corners=False,
        )
    ).eval()
    with torch.no_grad():
        seg = decode(list(outs))
    seg = seg[0] if isinstance(seg, (list, tuple)) else seg
    assert seg.shape == (1, 3, 8, 8)
