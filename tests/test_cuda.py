"""Every family on CUDA (skipped without a GPU).

* fp32 forward and backward on CUDA equal the CPU model's (TF32 off);
* a bf16 and an fp16 autocast training step with ``GradScaler`` stay
  finite;
* channels-last equals contiguous, folded equals unfused, and
  ``torch.compile`` equals eager, on CUDA;
* CUDA gets PyTorch's own ops: no CPU kernel in the autograd graph.

``tools/analysis/gpu_check.sh`` runs this file and the CUDA benchmark.
"""

import copy

import pytest
import torch

import mmmetaformer  # noqa: F401
from mmmetaformer.registry import MODELS

from .test_compile_hooks_amp import FAMILIES, TINY_MODELS, loss_of, randomise
from .test_meta_device import check_plain_convs

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'
)


@pytest.fixture(autouse=True)
def exact_fp32():
    """Full-precision fp32 matmuls and convs, so CUDA compares with CPU."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = saved


def build(name, **kwargs):
    torch.manual_seed(0)
    return randomise(
        MODELS.build(dict(type=name, **TINY_MODELS[name], **kwargs))
    )


def forward_backward(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    outs = model(x)
    loss_of(outs).backward()
    grads = [x.grad] + [
        p.grad for p in model.parameters() if p.grad is not None
    ]
    return [o.detach() for o in outs], grads


def assert_all_close(got, expected, rtol, atol):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(
            a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol
        )


@pytest.mark.parametrize('name', FAMILIES)
def test_cuda_equals_cpu_fp32(name):
    model = build(name).train()
    x = torch.randn(2, 3, 64, 96)
    outs_cpu, grads_cpu = forward_backward(model, x)
    cuda = copy.deepcopy(model).cuda()
    outs, grads = forward_backward(cuda, x.cuda())
    assert_all_close(outs, outs_cpu, 1e-4, 1e-5)
    assert_all_close(grads, grads_cpu, 1e-3, 1e-5)


@pytest.mark.parametrize('name', FAMILIES)
def test_cuda_graph_is_plain_pytorch(name):
    model = build(name).cuda().train()
    x = torch.randn(1, 3, 64, 96, device='cuda', requires_grad=True)
    check_plain_convs(model, model(x))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', FAMILIES)
def test_autocast_training_step_with_grad_scaler_is_finite(name, dtype):
    model = build(name).cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler('cuda', enabled=dtype is torch.float16)
    x = torch.randn(2, 3, 64, 96, device='cuda')
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=dtype):
            loss = loss_of(model(x))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('name', FAMILIES)
def test_channels_last_equals_contiguous(name):
    x = torch.randn(2, 3, 64, 96, device='cuda')
    results = []
    for channels_last in (True, False):
        model = build(name, channels_last=channels_last).cuda().train()
        results.append(forward_backward(model, x))
    (outs_a, grads_a), (outs_b, grads_b) = results
    assert all(o.is_contiguous() for o in outs_a + outs_b)
    assert_all_close(outs_a, outs_b, 1e-4, 1e-5)
    assert_all_close(grads_a, grads_b, 1e-3, 1e-5)


@pytest.mark.parametrize('name', FAMILIES)
def test_folded_equals_unfused(name):
    model = build(name).cuda().eval()
    x = torch.randn(2, 3, 61, 83, device='cuda')
    with torch.no_grad():
        expected = model(x)
        got = copy.deepcopy(model).switch_to_deploy()(x)
    scale = max(e.abs().max().item() for e in expected)
    assert_all_close(got, expected, 0, 1e-5 * scale)


@pytest.mark.parametrize('name', FAMILIES)
def test_compile_equals_eager(name):
    torch._dynamo.reset()
    model = build(name).cuda().train()
    x = torch.randn(2, 3, 64, 64, device='cuda')
    outs, grads = forward_backward(model, x)
    compiled = torch.compile(model)
    outs_c, grads_c = forward_backward(compiled, x)
    torch._dynamo.reset()
    assert_all_close(outs_c, outs, 1e-4, 1e-4)
    assert_all_close(grads_c, grads, 1e-3, 1e-4)
