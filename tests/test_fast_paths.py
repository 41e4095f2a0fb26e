"""The speed paths compute exactly the reference expressions, hook-safely.

``StarReLU`` has three paths (custom autograd function, in place on its
own fresh ``relu(x)`` without autograd, plain expression under tracing);
``Pooling`` subtracts in place on its fresh pooled tensor in every mode.
Each must match the plain expression, never modify a tensor it was given,
and leave gradients as autograd computes them. Block residuals are out of
place (hooks on every submodule see final values:
``tests/test_compile_hooks_amp.py``).
"""
import pytest
import torch
import torch.nn.functional as F

import mmmetaformer  # noqa: F401
from mmmetaformer.models.core.layers import StarReLU, _StarReLUFunction
from mmmetaformer.models.core.metaformer import MetaFormerBlock
from mmmetaformer.models.core.mixers import IdentityMixer, Pooling

from .test_compile_hooks_amp import build, randomise


def reference_starrelu(module, x):
    return module.scale * F.relu(x)**2 + module.bias


@pytest.fixture
def star():
    return StarReLU(scale_value=0.8944, bias_value=-0.4472)


def test_starrelu_training_path_matches_autograd(star):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    grad = torch.randn(2, 6, 5, 7)
    out = star(x)
    assert out.grad_fn is not None and 'StarReLU' in type(
        out.grad_fn).__name__
    expected = reference_starrelu(star, x)
    assert torch.equal(out, expected)
    ours = torch.autograd.grad(out, (x, star.scale, star.bias), grad)
    reference = torch.autograd.grad(expected, (x, star.scale, star.bias),
                                    grad)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_starrelu_function_passes_gradcheck():
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    scale = torch.tensor([0.7], dtype=torch.double, requires_grad=True)
    bias = torch.tensor([0.1], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_StarReLUFunction.apply,
                                    (x, scale, bias))


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
def test_starrelu_half_inputs_keep_their_dtype_and_square_in_fp32(
        star, dtype):
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
        ours, = torch.autograd.grad(out, x, grad)
        expected, = torch.autograd.grad(reference, x, grad)
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize('mode', ['grad', 'no_grad'])
def test_identity_block_leaves_its_input_alone(mode):
    block = MetaFormerBlock(
        4, token_mixer=IdentityMixer,
        mlp_layer=lambda d: torch.nn.Identity(),
        norm_layer=lambda d: torch.nn.Identity()).eval()
    x = torch.randn(1, 4, 5, 5, requires_grad=mode == 'grad')
    before = x.detach().clone()
    with torch.set_grad_enabled(mode == 'grad'):
        out = block(x)
    assert torch.equal(x.detach(), before)
    assert torch.equal(out.detach(), before * 4)


@pytest.mark.parametrize('name', [
    'PoolFormer', 'PoolFormerV2', 'IdentityFormer', 'RandFormer',
    'ConvFormer', 'CAFormer'
])
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
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b.detach())
