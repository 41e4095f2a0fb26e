"""The memory savers and the CPU kernels compute the reference expressions.

``StarReLU`` saves one tensor (custom autograd function; the plain
expression under tracing); ``Pooling`` subtracts in place on its fresh
pooled tensor and with autograd saves nothing for backward; on CPU
(``cpu_kernels``) ``Mlp`` recomputes an exact GELU in backward instead of
saving its output, ``GELU`` runs on the dense view of channels-last maps,
and ``DepthwiseConv2d`` and ``PointwiseConv2d`` compute their weight
gradients another way (a depthwise conv, one GEMM); all of it together
gives timm's training gradients.
Each must match the plain expression, never modify a tensor it was given,
and leave gradients as autograd computes them. Block residuals are out of
place (hooks on every submodule see final values:
``tests/test_compile_hooks_amp.py``).
"""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmmetaformer  # noqa: F401
from mmmetaformer.checkpoint import to_native
from mmmetaformer.models.core import cpu_kernels
from mmmetaformer.models.core.layers import (
    GELU,
    DepthwiseConv2d,
    PointwiseConv2d,
    StarReLU,
)
from mmmetaformer.models.core.metaformer import MetaFormerBlock, Mlp
from mmmetaformer.models.core.mixers import IdentityMixer, Pooling
from mmmetaformer.registry import MODELS

from .test_compile_hooks_amp import build, randomise
from .tolerance import assert_close, assert_gradients_close, model_rounding

CHANNELS_LAST = torch.channels_last


def saved_bytes(fn, exclude=()):
    """``(bytes autograd saves for backward during fn(), fn())``.

    Counts each storage once; tensors sharing a storage with one of
    ``exclude`` (parameters) are not activations and are left out.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def reference_starrelu(module, x):
    return module.scale * F.relu(x) ** 2 + module.bias


def module_gradcheck(module, *inputs):
    """``gradcheck`` of ``module(*inputs)`` in float64 with respect to the
    inputs and the module's parameters."""
    module = module.double()
    names = [n for n, _ in module.named_parameters()]

    def call(*tensors):
        params = dict(zip(names, tensors[len(inputs) :]))
        return torch.func.functional_call(
            module, params, tensors[: len(inputs)]
        )

    return torch.autograd.gradcheck(call, (*inputs, *module.parameters()))


@pytest.fixture
def star():
    return StarReLU(scale_value=0.8944, bias_value=-0.4472)


# the gradient may arrive in the input's layout or in the other one
LAYOUTS = [
    (torch.contiguous_format, torch.contiguous_format),
    (CHANNELS_LAST, CHANNELS_LAST),
    (CHANNELS_LAST, torch.contiguous_format),
    (torch.contiguous_format, CHANNELS_LAST),
]


@pytest.mark.parametrize('x_layout,grad_layout', LAYOUTS)
def test_starrelu_training_path_matches_autograd(star, x_layout, grad_layout):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=x_layout)
    x.requires_grad_()
    grad = torch.randn(2, 6, 5, 7).contiguous(memory_format=grad_layout)
    # the memory saver keeps relu(x) only: one input-sized fp32 tensor
    nbytes, out = saved_bytes(lambda: star(x), exclude=star.parameters())
    assert nbytes == x.numel() * 4
    expected = reference_starrelu(star, x)
    assert torch.equal(out, expected)
    ours = torch.autograd.grad(out, (x, star.scale, star.bias), grad)
    reference = torch.autograd.grad(expected, (x, star.scale, star.bias), grad)
    for a, b in zip(ours, reference):
        # the scalars' gradients sum over every element
        assert_close(a, b, reduction=x.numel())


CONV_CASES = {
    # name: (module, reference kwargs, input shape)
    'depthwise 7x7': (
        lambda: DepthwiseConv2d(6, 7, padding=3),
        dict(
            in_channels=6, out_channels=6, kernel_size=7, padding=3, groups=6
        ),
        (2, 6, 9, 11),
    ),
    'depthwise same, no bias': (
        lambda: DepthwiseConv2d(4, 9, padding='same', bias=False),
        dict(
            in_channels=4,
            out_channels=4,
            kernel_size=9,
            padding='same',
            groups=4,
            bias=False,
        ),
        (1, 4, 12, 10),
    ),
    'depthwise uneven': (
        lambda: DepthwiseConv2d(5, (3, 5), padding=(0, 1)),
        dict(
            in_channels=5,
            out_channels=5,
            kernel_size=(3, 5),
            padding=(0, 1),
            groups=5,
        ),
        (2, 5, 8, 7),
    ),
    'pointwise': (
        lambda: PointwiseConv2d(6, 10),
        dict(in_channels=6, out_channels=10, kernel_size=1),
        (2, 6, 9, 11),
    ),
    'pointwise, no bias': (
        lambda: PointwiseConv2d(8, 4, bias=False),
        dict(in_channels=8, out_channels=4, kernel_size=1, bias=False),
        (1, 8, 5, 6),
    ),
}


def conv_pair(case):
    torch.manual_seed(0)
    make, kwargs, shape = CONV_CASES[case]
    ours = make()
    reference = nn.Conv2d(**kwargs)
    reference.load_state_dict(ours.state_dict())
    return ours, reference, shape


@pytest.mark.parametrize('layout', [torch.contiguous_format, CHANNELS_LAST])
@pytest.mark.parametrize('case', list(CONV_CASES))
def test_conv_training_paths_match_nn_conv2d(case, layout):
    """Same forward bits and the same gradients as ``nn.Conv2d`` (the CPU
    kernels' backward where it applies: depthwise in any layout, pointwise
    on channels-last maps)."""
    ours, reference, shape = conv_pair(case)
    assert isinstance(ours, nn.Conv2d)
    x = torch.randn(shape).contiguous(memory_format=layout)
    x_ours, x_ref = (x.clone().requires_grad_() for _ in range(2))
    out, expected = ours(x_ours), reference(x_ref)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x_ours, *ours.parameters()), grad)
    want = torch.autograd.grad(
        expected, (x_ref, *reference.parameters()), grad
    )
    # weight gradients sum over every output position of the batch
    reduction = max(
        reference.weight[0].numel(), out.shape[0] * out.shape[2] * out.shape[3]
    )
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        assert_close(a, b, reduction=reduction)


@pytest.mark.parametrize('case', list(CONV_CASES))
def test_conv_functions_pass_gradcheck(case):
    ours, _, shape = conv_pair(case)
    ours = ours.double()
    x = (
        torch.randn(shape, dtype=torch.double)
        .contiguous(memory_format=CHANNELS_LAST)
        .requires_grad_()
    )
    assert torch.autograd.gradcheck(
        lambda x, *params: torch.func.functional_call(
            ours,
            dict(zip([n for n, _ in ours.named_parameters()], params)),
            (x,),
        ),
        (x, *ours.parameters()),
    )


@pytest.mark.parametrize('case', ['depthwise 7x7', 'pointwise'])
def test_conv_functions_under_bf16_autocast(case):
    """The conv runs in bf16 and so do its gradients; parameters get
    gradients in their own dtype, close to nn.Conv2d's under autocast."""
    ours, reference, shape = conv_pair(case)
    x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST)
    results = []
    for module in (ours, reference):
        leaf = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = module(leaf)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        results.append([leaf.grad, *(p.grad for p in module.parameters())])
    # Both convs round their operands and result to bf16 once each and
    # accumulate in fp32: three bf16 roundings, whatever the sum's length.
    for a, b in zip(*results):
        assert a.dtype == b.dtype == torch.float32
        assert_close(a, b, reduction=1, depth=3, dtype=torch.bfloat16)


def test_conv_modules_trace_to_standard_convs():
    for case in CONV_CASES:
        ours, _, shape = conv_pair(case)
        x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST)
        graph = torch.jit.trace(ours, x.requires_grad_()).graph
        kinds = {node.kind() for node in graph.nodes()}
        assert kinds & {'aten::_convolution', 'aten::_convolution_mode'}, (
            case,
            kinds,
        )
        assert 'prim::PythonOp' not in kinds, (case, kinds)


@pytest.mark.parametrize(
    'timm_name,cls_name',
    [
        ('poolformer_s12', 'PoolFormer'),
        ('poolformerv2_s12', 'PoolFormerV2'),
        ('convformer_s18', 'ConvFormer'),
        ('caformer_s18', 'CAFormer'),
    ],
)
def test_training_gradients_equal_timm(timm_name, cls_name):
    """Every custom backward together (StarReLU, pooling, GELU recompute,
    depthwise and pointwise convs) against timm's autograd: same loss
    gradients for every parameter, on timm's (perturbed) weights."""
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False)
    randomise(reference)
    native, _, _ = to_native(reference.state_dict())
    ours = MODELS.build(
        dict(type=cls_name, arch=timm_name.split('_')[1], out_norm_cfg=None)
    )
    ours.load_state_dict(
        {k: v for k, v in native.items() if not k.startswith('head.')}
    )
    ours.train()
    reference.train()
    x = torch.randn(1, 3, 64, 96)
    ours(x)[-1].square().mean().backward()
    last = reference.forward_intermediates(x, intermediates_only=True)[-1]
    last.square().mean().backward()
    # timm's gradients in our layout, by the same converter as its weights
    expected, _, _ = to_native(
        {
            n: p.grad
            for n, p in reference.named_parameters()
            if p.grad is not None
        },
        fmt='timm',
    )
    got = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    # forward and backward through every layer; weight gradients also sum
    # over the positions of the largest map
    fan_in, depth = model_rounding(ours)
    reduction = max(fan_in, x.shape[2] * x.shape[3] // 16)
    assert_gradients_close(got, expected, reduction, 2 * depth)


def test_starrelu_training_path_passes_gradcheck():
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    assert module_gradcheck(StarReLU(0.7, 0.1), x)


def test_starrelu_frozen_parameters_get_no_gradient(star):
    star.requires_grad_(False)
    x = torch.randn(4, 3, requires_grad=True)
    star(x).sum().backward()
    assert star.scale.grad is None and star.bias.grad is None
    torch.testing.assert_close(x.grad, 2 * star.scale * F.relu(x))


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode'])
def test_starrelu_inference_path_is_exact_and_keeps_the_input(star, mode):
    x = torch.randn(2, 6, 5, 7)
    before = x.clone()
    context = torch.no_grad if mode == 'no_grad' else torch.inference_mode
    with context():
        out = star(x)
    assert torch.equal(out, reference_starrelu(star, x))
    assert torch.equal(x, before)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_starrelu_half_inputs_keep_their_dtype_and_square_in_fp32(star, dtype):
    x = (torch.randn(2, 6, 5, 7) * 4).to(dtype)
    before = x.clone()
    # the fp32 expression, rounded once to the input's dtype
    expected = reference_starrelu(star, x.float()).to(dtype)
    with torch.no_grad():
        assert torch.equal(star(x), expected)
    assert torch.equal(x, before)
    assert torch.equal(torch.jit.trace(star, x)(x), expected)
    leaf = x.clone().requires_grad_()
    out = star(leaf)
    assert out.dtype == dtype and torch.equal(out, expected)
    out.float().sum().backward()
    assert leaf.grad.dtype == dtype
    assert star.scale.grad.dtype == torch.float32


def test_starrelu_traces_to_standard_ops(star):
    graph = torch.jit.trace(star, torch.randn(2, 3)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert 'prim::PythonOp' not in kinds
    assert 'aten::pow' in kinds


@pytest.mark.parametrize('mode', ['grad', 'no_grad'])
def test_pooling_is_exact_keeps_the_input_and_backpropagates(mode):
    pool = Pooling(8)
    x = torch.randn(1, 8, 9, 11, requires_grad=mode == 'grad')
    before = x.detach().clone()
    with torch.set_grad_enabled(mode == 'grad'):
        out = pool(x)
        reference = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x
    assert torch.equal(out, reference)
    assert torch.equal(x.detach(), before)
    if mode == 'grad':
        grad = torch.randn_like(out)
        (ours,) = torch.autograd.grad(out, x, grad)
        (expected,) = torch.autograd.grad(reference, x, grad)
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
def test_pooling_training_path_saves_nothing(layout):
    pool = Pooling(8)
    x = torch.randn(2, 8, 9, 11)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    nbytes, out = saved_bytes(lambda: pool(x))
    assert nbytes == 0
    reference = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, x, grad)
    (expected,) = torch.autograd.grad(reference, x, grad)
    assert_close(ours, expected, reduction=9)


@pytest.mark.parametrize('pool_size', [3, 5])
def test_pooling_training_path_passes_gradcheck(pool_size):
    x = torch.randn(1, 2, 6, 7, dtype=torch.double, requires_grad=True)
    assert module_gradcheck(Pooling(2, pool_size), x)


def test_pooling_rejects_an_even_window():
    with pytest.raises(ValueError, match='pool_size must be odd.*got 4'):
        Pooling(8, pool_size=4)


@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
def test_gelu_module_equals_torch_gelu_in_either_layout(layout):
    x = torch.randn(2, 6, 5, 7) * 3
    if layout == 'channels_last':
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    out = GELU()(x)
    expected = nn.GELU()(x)
    assert_close(out, expected, reduction=1)
    assert out.is_contiguous(memory_format=CHANNELS_LAST) == (
        layout == 'channels_last'
    )
    grad = torch.randn_like(out)
    assert_close(
        torch.autograd.grad(out, x, grad)[0],
        torch.autograd.grad(expected, x, grad)[0],
        reduction=1,
    )
    with pytest.raises(ValueError, match="approximate='tanh'"):
        GELU(approximate='tanh')


def gelu_mlp(bias=True):
    torch.manual_seed(0)
    return randomise(Mlp(8, 32, act_layer=GELU, bias=bias), scale=0.1)


@pytest.mark.parametrize('bias', [True, False])
def test_mlp_recomputes_gelu_instead_of_saving_it(bias):
    mlp = gelu_mlp(bias)
    x = (
        torch.randn(2, 8, 6, 5)
        .contiguous(memory_format=CHANNELS_LAST)
        .requires_grad_()
    )
    params = list(mlp.parameters())
    nbytes, out = saved_bytes(lambda: mlp(x), exclude=params)
    with torch.no_grad():
        expected_out = mlp.fc2(mlp.act(mlp.fc1(x)))
    assert torch.equal(out.detach(), expected_out)
    # plain modules (forced by a hook) save fc1's output *and* GELU's
    handle = mlp.act.register_forward_hook(lambda *args: None)
    plain_bytes, plain = saved_bytes(lambda: mlp(x), exclude=params)
    handle.remove()
    hidden_bytes = 2 * 32 * 6 * 5 * 4
    assert nbytes == plain_bytes - hidden_bytes
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x] + params, grad)
    reference = torch.autograd.grad(plain, [x] + params, grad)
    for a, b in zip(ours, reference):
        # two layers; weight gradients sum over the 2 * 6 * 5 positions
        assert_close(a, b, reduction=60, depth=2)


def test_gelu_pointwise_passes_gradcheck():
    h = (
        torch.randn(1, 6, 3, 4, dtype=torch.double)
        .contiguous(memory_format=CHANNELS_LAST)
        .requires_grad_()
    )
    weight = torch.randn(3, 6, 1, 1, dtype=torch.double, requires_grad=True)
    bias = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        cpu_kernels.gelu_pointwise, (h, weight, bias)
    )


def test_mlp_calls_hooked_modules_and_their_hooks_fire():
    """A hook on ``act`` or ``fc2``, or a global module hook, sees every
    call: the MLP then runs its modules one by one."""
    x = (
        torch.randn(1, 8, 4, 4)
        .contiguous(memory_format=CHANNELS_LAST)
        .requires_grad_()
    )
    mlp = gelu_mlp().train()
    seen = []
    mlp.fc2.register_forward_pre_hook(lambda m, args: seen.append('fc2'))
    mlp.act.register_forward_hook(lambda *args: seen.append('act'))
    mlp(x)
    assert seen == ['act', 'fc2']
    seen.clear()
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(type(module).__name__)
    )
    try:
        mlp2 = gelu_mlp()
        mlp2(x)
        assert seen == ['PointwiseConv2d', 'GELU', 'PointwiseConv2d', 'Mlp']
    finally:
        handle.remove()


@pytest.mark.parametrize('name', ['PoolFormer', 'ConvFormer', 'ConvMixer'])
def test_either_memory_layout_computes_the_same(name):
    """``channels_last`` is a layout choice only; outputs are contiguous
    NCHW (what stock heads ``view``) either way."""
    x = torch.randn(1, 3, 64, 96)
    results = []
    for channels_last in (True, False):
        model = randomise(build(name, channels_last=channels_last)).eval()
        with torch.no_grad():
            results.append(model(x))
    reduction, depth = model_rounding(model)
    for a, b in zip(*results):
        assert a.is_contiguous() and b.is_contiguous()
        # each layout takes its own kernels: rounding differs, values not
        assert_close(a, b, reduction, depth)


@pytest.mark.parametrize('value', ['yes', 1, 'channels_last'])
def test_invalid_channels_last_is_refused(value):
    with pytest.raises(
        ValueError,
        match=f'channels_last={value!r} is '
        r'invalid; valid: None \(per device\), True, False',
    ):
        build('PoolFormer', channels_last=value)


@pytest.mark.parametrize('mode', ['grad', 'no_grad'])
def test_identity_block_leaves_its_input_alone(mode):
    block = MetaFormerBlock(
        4,
        token_mixer=IdentityMixer,
        mlp_layer=lambda d: torch.nn.Identity(),
        norm_layer=lambda d: torch.nn.Identity(),
    ).eval()
    x = torch.randn(1, 4, 5, 5, requires_grad=mode == 'grad')
    before = x.detach().clone()
    with torch.set_grad_enabled(mode == 'grad'):
        out = block(x)
    assert torch.equal(x.detach(), before)
    assert torch.equal(out.detach(), before * 4)


@pytest.mark.parametrize(
    'name',
    [
        'PoolFormer',
        'PoolFormerV2',
        'IdentityFormer',
        'RandFormer',
        'ConvFormer',
        'CAFormer',
    ],
)
def test_inference_equals_the_autograd_forward(name):
    """Same outputs with and without autograd (StarReLU's paths)."""
    model = randomise(build(name)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    for a, b in zip(fast, slow):
        if name == 'RandFormer':
            # torch.matmul folds batched products into one GEMM only when
            # the input needs no grad: same math, different rounding
            assert_close(a, b, *model_rounding(model))
        else:
            assert torch.equal(a, b.detach())
