"""How far apart two correct computations of the same values may be.

Two correct implementations of one function (another kernel, memory
layout, fused or folded ops, another CPU's vector width) sum in another
order, so they differ by rounding only. For a sum of ``K`` products in a
float format of unit roundoff ``u`` (``eps / 2``) the error is at most
``K u sum|terms|``; with rounding errors of random sign it grows like
``sqrt(K) u``. Through ``L`` layers the errors of each layer add up. The
allowance here is that statistical bound with a safety factor, relative
to the largest magnitude of the reference::

    max |actual - expected| <= SAFETY * u * sqrt(K) * L * max |expected|

A defect (a wrong index, a missing term, a wrong layout) moves values by
a sizeable fraction of their magnitude, orders above this allowance, so a
test using it fails for a defect and not for a machine.
"""

import math

import torch
import torch.nn as nn

SAFETY = 8


def rounding_tolerance(dtype, reduction, depth=1):
    """Relative allowance for ``depth`` layers of ``reduction``-term sums
    computed in ``dtype``."""
    unit = torch.finfo(dtype).eps / 2
    return SAFETY * unit * math.sqrt(max(reduction, 1)) * max(depth, 1)


def model_rounding(model):
    """``(reduction, depth)`` of a network: the longest dot product of any
    conv or linear layer (its fan-in) and the number of such layers (an
    upper bound on the layers between input and any output)."""
    layers = [
        m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return max(m.weight[0].numel() for m in layers), len(layers)


def assert_close(
    actual, expected, reduction, depth=1, msg='', scale=None, dtype=None
):
    """``actual`` equals ``expected`` up to ``rounding_tolerance`` in
    ``dtype`` (the format the computations round in; default: that of
    ``expected``, e.g. ``torch.bfloat16`` for fp32 results of an autocast
    region), relative to ``scale``: by default the largest magnitude of
    ``expected``. A quantity that cancels to about zero (the gradient of
    a shift that the next layer removes) is compared at the magnitude of
    the terms it sums instead: pass that as ``scale``."""
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    expected = expected.detach()
    actual = actual.detach().to(expected.dtype)
    if scale is None:
        scale = expected.abs().max().item()
    dtype = dtype or expected.dtype
    allowed = rounding_tolerance(dtype, reduction, depth) * max(
        scale, torch.finfo(expected.dtype).tiny
    )
    diff = (actual - expected).abs().max().item()
    assert diff <= allowed, (
        f'{msg}: max |difference| {diff:.3g} > {allowed:.3g} allowed '
        f'(reduction {reduction}, depth {depth}, max |expected| '
        f'{scale:.3g})'
    )


def assert_gradients_close(got, expected, reduction, depth):
    """``assert_close`` for ``{parameter name: gradient}`` dicts.

    Each gradient is compared at the magnitude of its module's largest
    gradient: the terms a module's gradients sum are of that size, while a
    parameter whose effect the next layer cancels (a norm's bias before
    pooling, which removes any per-channel shift) gets a gradient of
    rounding noise only.
    """
    assert got.keys() == expected.keys()

    def module(name):
        return name.rsplit('.', 1)[0]

    scale = {}
    for name, grad in expected.items():
        scale[module(name)] = max(
            scale.get(module(name), 0.0), grad.abs().max().item()
        )
    for name, grad in got.items():
        assert_close(
            grad,
            expected[name],
            reduction,
            depth,
            msg=name,
            scale=scale[module(name)],
        )
