"""Parameters and MACs of backbones and models, counted the fvcore way.

The MetaFormer papers count multiply-accumulates (and call them FLOPs) with
fvcore. mmengine's ``FlopAnalyzer`` is a port of fvcore's counter: it traces
the model with ``torch.jit`` and sums a per-operator handle over the graph.
It misses ops these backbones rely on, so ``EXTRA_HANDLES`` adds them.

What is counted (one MAC = one multiply-accumulate):

* fvcore's defaults: convolutions (plus ``aten::_convolution_mode``,
  which ``padding='same'`` convs trace to),
  ``linear``/``matmul``/``bmm``/``einsum``, norms
  (``group_norm``/``layer_norm``: 5 per element with an affine, 4
  without; ``batch_norm``: 1-2 per element in eval), resampling and
  ``adaptive_avg_pool2d`` (1 per *input* element, i.e. one accumulate per
  pooled element).
* ``scaled_dot_product_attention``: ``Q K^T`` and ``A V``, that is
  ``prod(batch dims) * L * S * (E + Ev)`` for ``q [.., L, E]``,
  ``k [.., S, E]``, ``v [.., S, Ev]`` (``2 * B * heads * N^2 * head_dim``
  for self-attention). The softmax is not counted, as fvcore does not count
  softmax.
* ``avg_pool2d``: one accumulate per output element per kernel element
  (``out.numel() * kh * kw``), counting the padded border positions like the
  interior ones even with ``count_include_pad=False``.
* Explicit element-wise multiplications, 1 per output element: ``mul``
  (layer and residual scales, StarReLU's scale ``s``) and ``pow``
  (StarReLU's ``relu(x) ** 2``). Under tracing our StarReLU runs the plain
  expression ``s * relu(x) ** 2 + b``, as timm's does, so both trace to
  ``relu``, ``pow``, ``mul`` and ``add``. ``square`` and ``addcmul`` (a
  fused multiply-add) and the in-place variants of all four are counted the
  same way, so rewriting a layer with them does not change its count.

What is not counted, as in fvcore: additions, subtractions and divisions
(residuals, PoolFormer's ``pool(x) - x``), activation functions (ReLU,
GELU, softmax), reductions and data movement. They are registered as
*ignored* so that the list of unsupported ops only names ops nobody decided
about.

The element-wise terms are tiny next to the convolutions (under 1% for
every registered backbone); at 224x224 the counts match the published
classification figures (``REFERENCE``) within 3% once the classifier head,
which a backbone lacks, is added back (``head_macs``/``head_params``).
"""

import warnings
from collections import Counter

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import elementwise_flop_counter, get_shape

__all__ = [
    'EXTRA_HANDLES',
    'IGNORED_OPS',
    'REFERENCE',
    'count_backbone',
    'count_macs',
    'count_model_macs',
    'count_params',
    'head_macs',
    'head_params',
]


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def _int_list(value):
    """A traced ``int[]`` argument (a constant or a ``ListConstruct``)."""
    constant = value.toIValue()
    if constant is not None:
        return [constant] if isinstance(constant, int) else list(constant)
    return [item.toIValue() for item in value.node().inputs()]


def sdpa_flop_jit(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``Q K^T`` plus ``A V``."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, length, qk_dim = q
    source = k[-2]
    return _prod(batch) * length * source * (qk_dim + v[-1])


def avg_pool2d_flop_jit(inputs, outputs):
    """``aten::avg_pool2d``: ``kh * kw`` accumulates per output element."""
    kernel = _int_list(inputs[1])
    if len(kernel) == 1:
        kernel = kernel * 2
    return _prod(get_shape(outputs[0])) * kernel[0] * kernel[1]


def conv_mode_flop_jit(inputs, outputs):
    """``aten::_convolution_mode`` (a conv with ``padding='same'``).

    fvcore only knows ``aten::_convolution``; string padding traces to this
    op instead (ConvMixer's depthwise convs). Same count: every output
    element takes ``prod(weight.shape[1:])`` MACs.
    """
    weight = get_shape(inputs[1])
    return Counter(conv=_prod(get_shape(outputs[0])) * _prod(weight[1:]))


_PER_OUTPUT_ELEMENT = elementwise_flop_counter(0, 1)

# Counted on top of FlopAnalyzer's defaults.
EXTRA_HANDLES = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::avg_pool2d': avg_pool2d_flop_jit,
    'aten::_convolution_mode': conv_mode_flop_jit,
    # in-place variants count the same, so an in-place rewrite of a layer
    # does not change its count
    **{
        op + suffix: _PER_OUTPUT_ELEMENT
        for op in ('aten::mul', 'aten::square', 'aten::pow', 'aten::addcmul')
        for suffix in ('', '_')
    },
}

# Seen in these models and deliberately not counted (see the module doc).
IGNORED_OPS = (
    'aten::add',
    'aten::sub',
    'aten::rsub',
    'aten::div',
    'aten::neg',
    'aten::relu',
    'aten::relu_',
    'aten::gelu',
    'aten::silu',
    'aten::sigmoid',
    'aten::softmax',
    'aten::max_pool2d',
    'aten::mean',
    'aten::sum',
    'aten::bernoulli_',
    'aten::div_',
    'aten::add_',
    'aten::sub_',
    'aten::unflatten',
    'aten::pad',
    'aten::new_empty',
    'aten::masked_fill',
    'aten::sqrt',
    'aten::exp',
    'aten::log',
    'aten::abs',
    'aten::hardswish',
    'aten::hardsigmoid',
    'aten::tanh',
    'aten::erf',
    'aten::feature_dropout',
    'aten::alpha_dropout',
)

# ImageNet-1K classifiers at 224x224 as the papers publish them ("MetaFormer
# Is Actually What You Need for Vision", "MetaFormer Baselines for Vision"):
# whole model, classifier head included. IdentityFormer only publishes its
# range ends.
REFERENCE = {
    'poolformer_s12': dict(params=12e6, macs=1.8e9),
    'poolformer_s24': dict(params=21e6, macs=3.4e9),
    'poolformer_s36': dict(params=31e6, macs=5.0e9),
    'poolformer_m36': dict(params=56e6, macs=8.8e9),
    'poolformer_m48': dict(params=73e6, macs=11.6e9),
    'identityformer_s12': dict(params=11.9e6, macs=1.8e9),
    'identityformer_m48': dict(params=73.3e6, macs=11.5e9),
    'convformer_s18': dict(params=27e6, macs=3.9e9),
    'convformer_s36': dict(params=40e6, macs=7.6e9),
    'convformer_m36': dict(params=57e6, macs=12.8e9),
    'convformer_b36': dict(params=100e6, macs=22.6e9),
    'caformer_s18': dict(params=26e6, macs=4.1e9),
    'caformer_s36': dict(params=39e6, macs=8.0e9),
    'caformer_m36': dict(params=56e6, macs=13.2e9),
    'caformer_b36': dict(params=99e6, macs=23.2e9),
}

# Families whose classifiers use the baselines' MLP head
# (fc1 C -> 4C, GELU, LayerNorm, fc2 4C -> classes) instead of a Linear.
MLP_HEAD_FAMILIES = ('convformer', 'caformer')


def head_params(family, dim, num_classes=1000):
    """Parameters of the ImageNet classifier a backbone lacks.

    The final norm over the pooled ``dim`` features (weight and bias: a
    GroupNorm in PoolFormer v1, a LayerNorm in the baselines) plus a Linear
    head, or for ConvFormer/CAFormer the MLP head with biases and a
    LayerNorm of width ``4 * dim``.
    """
    norm = 2 * dim
    if family in MLP_HEAD_FAMILIES:
        hidden = 4 * dim
        return (
            norm + (dim + 1) * hidden + 2 * hidden + (hidden + 1) * num_classes
        )
    return norm + (dim + 1) * num_classes


def head_macs(family, dim, num_classes=1000):
    """MACs of that classifier head on the pooled ``dim`` vector."""
    if family in MLP_HEAD_FAMILIES:
        hidden = 4 * dim
        return dim * hidden + hidden * num_classes
    return dim * num_classes


def count_params(model):
    """Every parameter of ``model``, trainable or frozen (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


class _Call(nn.Module):
    """Trace ``fn(module, *inputs)`` with ``module`` as the traced root."""

    def __init__(self, module, fn):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(self.module, *inputs)


def flop_analyzer(model, inputs, handles=None):
    """A ``FlopAnalyzer`` with ``EXTRA_HANDLES`` and ``IGNORED_OPS`` set.

    Args:
        model (nn.Module): traced with ``inputs``.
        inputs (Tensor | tuple[Tensor]): real tensors (tracing runs them).
        handles (dict | None): op name -> handle, overriding
            ``EXTRA_HANDLES`` (a ``None`` handle ignores the op).
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    analyzer = FlopAnalyzer(model, tuple(inputs))
    analyzer.set_op_handle(**{op: None for op in IGNORED_OPS})
    analyzer.set_op_handle(**dict(EXTRA_HANDLES, **(handles or {})))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer


def count_macs(model, inputs, fn=None, handles=None):
    """MACs of ``fn(model, *inputs)`` (default ``model(*inputs)``).

    Runs in eval mode under ``no_grad`` (the train/eval state is restored).

    Returns:
        dict: ``macs`` (int), ``by_operator`` (op -> MACs) and
        ``unsupported`` (op -> occurrences of ops that had no handle and were
        not deliberately ignored: they are *not* in ``macs``).
    """
    root = model if fn is None else _Call(model, fn)
    was_training = model.training
    model.eval()
    try:
        analyzer = flop_analyzer(root, inputs, handles)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            macs = analyzer.total()
        return dict(
            macs=int(macs),
            by_operator={k: int(v) for k, v in analyzer.by_operator().items()},
            unsupported=dict(analyzer.unsupported_ops()),
        )
    finally:
        model.train(was_training)


def count_model_macs(model, scope, image):
    """MACs of the whole network ``tools/export_onnx.py`` writes for
    ``model``: preprocessing, backbone, neck, heads and the in-graph
    post-processing of ``mmmetaformer.export`` (a detector's RoI heads on
    the graph's fixed number of proposals; NMS and RoIAlign are ops without
    a handle, listed in ``unsupported``).

    Args:
        model: an mmdet detector or mmseg ``EncoderDecoder``.
        scope (str): ``'mmdet'`` or ``'mmseg'``.
        image (Tensor): ``[N, 3, H, W]``, 0-255, as the test pipeline
            leaves it.

    Returns:
        dict: as ``count_macs``.
    """
    from mmmetaformer.export.exporter import export_graph

    return count_macs(export_graph(model, scope), image.float())


def count_backbone(
    model, shape=(224, 224), batch_size=1, in_channels=None, handles=None
):
    """Parameters and MACs of a backbone on one ``[B, C, H, W]`` input.

    Args:
        model (nn.Module): the backbone (its output norms are counted too;
            build it with ``out_norm_cfg=None`` to compare with classifiers).
        shape (tuple[int, int]): input ``(H, W)``.
        batch_size (int): B (MACs grow linearly with it).
        in_channels (int | None): C; default the stem's input channels.
        handles (dict | None): see ``flop_analyzer``.

    Returns:
        dict: ``params``, ``macs``, ``by_operator``, ``unsupported``.
    """
    if in_channels is None:
        in_channels = _stem_in_channels(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else 'cpu'
    x = torch.randn(batch_size, in_channels, *shape, device=device)
    result = count_macs(model, x, handles=handles)
    return dict(params=count_params(model), **result)


def _stem_in_channels(model):
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3
