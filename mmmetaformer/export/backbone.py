"""ONNX export of a backbone with dynamic height and width.

Decision: the TorchScript exporter (``dynamo=False``) on every torch
version. torch >= 2.9 defaults to the dynamo exporter, but the backbones'
size-dependent parts (RandFormer's resampled mixing matrices, ConvMixer's
pyramid adapter) are written for tracing: while ``torch.onnx.export`` traces
they compute sizes as tensors (``torch.onnx.is_in_onnx_export()``), so one
graph serves every input size. ``tests/test_onnx.py`` checks the exported
graph's numbers in onnxruntime at sizes other than the traced one, on every
supported torch.
"""

import torch

OPSET = 17


def export_onnx(
    model, path, example, dynamic_batch=False, opset_version=OPSET
):
    """Export ``model`` (returning a tuple of NCHW maps) to ``path``.

    Args:
        model (nn.Module): in eval mode; ``model(example)`` returns a tuple
            or list of ``[N, C_i, H_i, W_i]`` tensors.
        path (str | Path): the ``.onnx`` file to write.
        example (Tensor): ``[N, 3, H, W]`` input to trace with; H and W are
            exported as dynamic axes (``height``, ``width``), and so are
            every output's.
        dynamic_batch (bool): export N as a dynamic axis too (``batch``).

    Returns:
        list[str]: the output names, ``out0``, ``out1``, ...
    """
    with torch.no_grad():
        num_outputs = len(model(example))
    names = [f'out{i}' for i in range(num_outputs)]
    batch = {0: 'batch'} if dynamic_batch else {}
    axes = dict(image={**batch, 2: 'height', 3: 'width'})
    for name in names:
        axes[name] = {**batch, 2: f'{name}_h', 3: f'{name}_w'}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        opset_version=opset_version,
        input_names=['image'],
        output_names=names,
        dynamo=False,
        dynamic_axes=axes,
    )
    return names
