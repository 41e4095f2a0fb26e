"""Off the CPU the model is plain PyTorch; on CPU the kernels change nothing.

* On the ``meta`` device (what any non-CPU device gets, checked without
  a GPU) every trainable conv's gradient is PyTorch's own convolution
  backward: the autograd graph of a training forward has exactly one
  ``ConvolutionBackward0`` node per conv, each conv's weight is fed by one
  of them; custom autograd functions (the memory savers of StarReLU and
  pooling) feed no conv weight.
* On CPU with ``cpu_kernels.disabled()`` the graph is that same plain one;
  with the kernels on, outputs and gradients equal the plain model's.
"""

import pytest
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401
from mmmetaformer.models.core import ChannelsLastMlp, cpu_kernels
from mmmetaformer.registry import MODELS

from .test_compile_hooks_amp import FAMILIES, TINY_MODELS, randomise
from .tolerance import assert_close, assert_gradients_close, model_rounding


def build(name, device='cpu'):
    torch.manual_seed(0)
    with torch.device(device):
        return MODELS.build(dict(type=name, **TINY_MODELS[name]))


def graph_nodes(outputs):
    """Every node of the autograd graph behind ``outputs``."""
    seen, stack = set(), [o.grad_fn for o in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return seen


def check_plain_convs(model, outputs):
    nodes = graph_nodes(outputs)
    # ChannelsLastMlp runs its 1x1 convs' weights as nn.Linear (timm's
    # arithmetic in attention stages): PyTorch's own linear, no conv node
    as_linear = {
        id(m)
        for mlp in model.modules()
        if isinstance(mlp, ChannelsLastMlp)
        for m in (mlp.fc1, mlp.fc2)
    }
    convs = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        and m.weight.requires_grad
        and id(m) not in as_linear
    ]
    conv_nodes = [
        n for n in nodes if type(n).__name__ == 'ConvolutionBackward0'
    ]
    assert len(conv_nodes) == len(convs)
    # each conv weight's gradient comes from one ConvolutionBackward0
    fed = {}
    for node in conv_nodes:
        for fn, _ in node.next_functions:
            if type(fn).__name__ == 'AccumulateGrad':
                fed[id(fn.variable)] = fed.get(id(fn.variable), 0) + 1
    assert all(fed.get(id(c.weight)) == 1 for c in convs)


@pytest.mark.parametrize('name', FAMILIES)
def test_meta_device_gets_pytorch_convolution_backward(name):
    model = build(name, 'meta').train()
    x = torch.randn(2, 3, 64, 96, device='meta', requires_grad=True)
    check_plain_convs(model, model(x))


@pytest.mark.parametrize('name', FAMILIES)
def test_cpu_with_kernels_off_is_the_plain_model(name):
    model = build(name).train()
    x = torch.randn(1, 3, 64, 96, requires_grad=True)
    with cpu_kernels.disabled():
        assert not cpu_kernels.enabled()
        outputs = model(x)
    assert cpu_kernels.enabled()
    check_plain_convs(model, outputs)


@pytest.mark.parametrize('name', FAMILIES)
def test_cpu_kernels_on_and_off_agree(name):
    model = randomise(build(name)).train()
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    names, params = zip(
        *[(n, p) for n, p in model.named_parameters() if p.requires_grad]
    )
    results = []
    for on in (True, False):
        cpu_kernels.set_enabled(on)
        try:
            outputs = model(x)
            loss = sum(o.square().mean() for o in outputs)
            grads = torch.autograd.grad(loss, [x, *params])
        finally:
            cpu_kernels.set_enabled(True)
        results.append(
            (
                [o.detach() for o in outputs],
                dict(zip(('input', *names), grads)),
            )
        )
    (outs_on, grads_on), (outs_off, grads_off) = results
    # equal up to rounding: the plain model also keeps NCHW memory on CPU,
    # where oneDNN sums in another order; weight gradients also sum over
    # the positions of the largest map
    fan_in, depth = model_rounding(model)
    for a, b in zip(outs_on, outs_off):
        assert_close(a, b, fan_in, depth)
    assert_gradients_close(
        grads_on, grads_off, max(fan_in, 2 * 16 * 24), 2 * depth
    )
