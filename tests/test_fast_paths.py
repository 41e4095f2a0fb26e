"""The speed paths compute exactly the reference expressions.

``StarReLU`` has three paths (custom autograd function, in-place under
no_grad, plain expression under tracing); ``Pooling`` and the block
residuals work in place under no_grad. Each must match the plain
expression, never modify a tensor the caller holds, and leave gradients
as autograd computes them.
"""
import pytest
import torch
import torch.nn.functional as F

import mmmetaformer  # noqa: F401
from mmmetaformer.models.core.layers import StarReLU
from mmmetaformer.models.core.metaformer import MetaFormerBlock, _residual
from mmmetaformer.models.core.mixers import IdentityMixer, Pooling
from mmmetaformer.registry import MODELS


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
    from mmmetaformer.models.core.layers import _StarReLUFunction
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


def test_starrelu_inference_path_is_exact_and_keeps_the_input(star):
    x = torch.randn(2, 6, 5, 7)
    before = x.clone()
    with torch.no_grad():
        out = star(x)
    assert torch.equal(out, reference_starrelu(star, x))
    assert torch.equal(x, before)
    # mixed dtypes take the plain expression (same type promotion)
    half = x.to(torch.bfloat16)
    with torch.no_grad():
        mixed = star(half)
    assert mixed.dtype == reference_starrelu(star, half).dtype


def test_starrelu_traces_to_standard_ops(star):
    graph = torch.jit.trace(star, torch.randn(2, 3)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert 'prim::PythonOp' not in kinds
    assert 'aten::pow' in kinds


def test_pooling_inference_path_is_exact_and_keeps_the_input():
    pool = Pooling(8)
    x = torch.randn(1, 8, 9, 11)
    before = x.clone()
    with torch.no_grad():
        out = pool(x)
    reference = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x
    assert torch.equal(out, reference)
    assert torch.equal(x, before)


def test_residual_never_writes_into_what_the_caller_holds():
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        # the branch is the block input (an identity branch): out of place
        out = _residual(x, x, x)
        assert torch.equal(x, out / 2) and out.data_ptr() != x.data_ptr()
        # a view of the input: out of place
        view = x.view(1, 4, 9).view(1, 4, 3, 3)
        out = _residual(x, view, x)
        assert out.data_ptr() != x.data_ptr()
        # a fresh branch: in place on the branch, input untouched
        before = x.clone()
        branch = torch.randn(1, 4, 3, 3)
        expected = x + branch
        out = _residual(x, branch, x)
        assert out.data_ptr() == branch.data_ptr()
        assert torch.equal(out, expected) and torch.equal(x, before)
        # broadcasting shortcut: out of place
        out = _residual(torch.ones(1, 1, 1, 1), branch, x)
        assert out.shape == branch.shape


def test_identity_block_leaves_its_input_alone():
    block = MetaFormerBlock(
        4, token_mixer=IdentityMixer,
        mlp_layer=lambda d: torch.nn.Identity(),
        norm_layer=lambda d: torch.nn.Identity()).eval()
    x = torch.randn(1, 4, 5, 5)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
    assert torch.equal(x, before)
    assert torch.equal(out, before * 4)


@pytest.mark.parametrize('cls_name, arch', [('PoolFormer', 's12'),
                                            ('PoolFormerV2', 's12'),
                                            ('ConvFormer', 's18'),
                                            ('CAFormer', 's18'),
                                            ('RandFormer', 's12'),
                                            ('IdentityFormer', 's12')])
def test_inference_equals_the_autograd_forward(cls_name, arch):
    """Same outputs with and without autograd (in-place paths on/off)."""
    torch.manual_seed(0)
    model = MODELS.build(dict(type=cls_name, arch=arch)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    for a, b in zip(fast, slow):
        if cls_name == 'RandFormer':
            # torch.matmul folds [B, C, N] @ [N, N] into one GEMM only when
            # the input needs no grad: same math, different rounding
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b.detach())
