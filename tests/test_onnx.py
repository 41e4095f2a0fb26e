"""ONNX export (opset 17, dynamic H and W, the TorchScript exporter on every
torch: ``mmmetaformer.export``) of every family, checked with
onnxruntime.

Each model is exported once at one input size and run by onnxruntime at
two other sizes; both must equal eager PyTorch. The sizes are chosen so the
resampling modes the export saw are not the ones it is checked with:
RandFormer's grids shrink (area) at the export size and enlarge (bilinear)
at 256x224, ConvMixer's adapter levels pool by non-integer ratios. A graph
with a size or a Python-side choice frozen in would fail here.

Tolerance: ``max |onnxruntime - eager| <= 1e-4 * max |eager|`` per output
(relative to the output's largest magnitude; the default output norms,
GroupNorm with one group, scale every output to unit variance).
"""

import onnxruntime as ort
import pytest
import torch

import mmmetaformer  # noqa: F401
from mmmetaformer.export import export_onnx
from mmmetaformer.models.core.resample import (
    _enlarges,
    resample_to,
    resample_weights,
)

from .test_compile_hooks_amp import FAMILIES, build, randomise
from .tolerance import assert_close

EXPORT_SIZE = (64, 96)
CHECK_SIZES = ((97, 131), (256, 224))
TOLERANCE = 1e-4


def export(model, path):
    export_onnx(model, path, torch.randn(1, 3, *EXPORT_SIZE))
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('name', FAMILIES)
def test_onnx_equals_eager_at_two_sizes(name, tmp_path):
    model = randomise(build(name)).eval()
    session = export(model, tmp_path / f'{name}.onnx')
    for size in CHECK_SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, dict(image=x.numpy()))
        assert len(got) == len(expected)
        for out, ref in zip(got, expected):
            assert out.shape == tuple(ref.shape), (size, out.shape)
            diff = (torch.from_numpy(out) - ref).abs().max().item()
            assert diff <= TOLERANCE * ref.abs().max().item(), (size, diff)


@pytest.mark.parametrize('in_size', [(9, 13), (14, 14), (40, 57)])
def test_export_resampling_equals_the_eager_ops(in_size):
    """``resample_weights`` (the exported form) against ``F.interpolate``
    and ``F.adaptive_avg_pool2d`` (what eager runs), both modes, integer
    and non-integer ratios, traced sizes included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *in_size, generator=gen)
    h, w = in_size
    for size in [
        (h, w),
        (2 * h + 1, 3 * w),
        (h // 2 + 1, w // 3 + 1),
        (h - 1, w + 2),
        (1, 1),
        (56, 56),
        (7, 7),
    ]:
        enlarge = _enlarges(in_size, size)
        expected = resample_to(x, size)
        for sizes in (
            (in_size, size),
            (torch.tensor(in_size), torch.tensor(size)),
        ):
            flag = (
                torch.tensor(enlarge) if torch.is_tensor(sizes[0]) else enlarge
            )
            rows = resample_weights(sizes[0][0], sizes[1][0], flag)
            cols = resample_weights(sizes[0][1], sizes[1][1], flag)
            # two sums: over the input rows, then the input columns
            assert_close(rows @ x @ cols.t(), expected, max(in_size), 2)
