"""Whether a tracer is recording the model: the core's one such check.

Layers with an eager-only path (a custom ``autograd.Function`` that saves
memory, a CPU kernel, a layout change) take the plain PyTorch path while a
graph is being captured, so that tracers, compilers and exporters see
standard ops only.
"""

import torch


def capturing_graph():
    """True under ``torch.jit`` tracing or scripting, ``torch.compile``
    (dynamo) or ``torch.onnx.export``."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def sizes_are_symbolic():
    """True under ``torch.onnx.export``: tensor sizes read in ``forward``
    are traced values, so code that picks a branch or an output size from
    them must compute in the graph to stay valid for every input size."""
    return torch.onnx.is_in_onnx_export()
