"""Deploy folds: exact re-parametrisations for inference.

As in mmpretrain's RepVGG and RIFormer, every module that has something to
fold owns its fold, one call to a function here (``fold_block``,
``fold_pooling``, ...). Two contracts, two names:

* ``switch_to_deploy()``: in place and without arguments, on the block
  (``MetaFormerBlock``), the downsampling and the trunks (which return
  themselves);
* ``fold_branch(norm, layer_scale)``: a block's branch
  ``layer_scale(fn(norm(x)))`` -- each token mixer and the MLP fold what
  is exact of ``norm`` and ``layer_scale`` into themselves and return the
  ``(norm, layer_scale)`` the block keeps.

Each fold rewrites the module's own parameters in place so that the same
``forward`` computes the same function with fewer multiplies: per-channel
affine maps next to a linear map are folded into its weights and the affine
modules become ``nn.Identity`` (or lose their weights). The module tree
keeps its shape, so a model built with ``deploy=True`` has exactly the keys
of a folded one and loads its checkpoint. A user's token mixer without a
``fold_branch`` runs unfused (one log line says so).

Identities the folds rely on (``n`` a ``[B, C, H, W]`` map, ``g``/``b``
per-channel vectors, ``W`` a conv or linear weight)::

    W (g * n + b) = (W diag(g)) n + W b          1x1 conv / Linear: exact
    K*(g * n)     = (K diag(g)) * n               any conv with *zero*
                                                  padding: exact
    K*(n + b)    != K*n + (sum of K) b            k x k conv, k > 1, zero
                                                  padding: wrong on the
                                                  outer k // 2 rows/columns

Per part of a block (exact = equal in real arithmetic; fp32 outputs differ
from the unfused model's by rounding only, < 1e-5 relative):

* ``norm2`` affine -> ``mlp.fc1``: exact (1x1).
* ``mlp.act`` StarReLU ``s * relu(h)**2 + b`` -> ``mlp.fc2``: exact (1x1):
  ``fc2(s r + b) = (s W2) r + b W2 1``; the activation becomes a frozen
  StarReLU with ``s = 1, b = 0``, i.e. ``relu(h)**2``.
* ``layer_scale2`` -> ``mlp.fc2`` rows and bias: exact.
* ``norm1`` affine -> ``SepConv.pwconv1`` / ``Attention.qkv``: exact.
* ``SepConv.act1`` scale -> ``SepConv.dwconv``: exact (zero padding).
* ``SepConv.act1`` bias -> ``dwconv``: **not exact** (7x7, zero padding:
  the borders would differ), so it stays: ``act1`` becomes a frozen
  StarReLU with ``s = 1, b = b / s``.
* ``layer_scale1`` -> ``SepConv.pwconv2`` / ``Attention.proj``: exact.
* ``Pooling`` (``avg_pool(n) - n``, ``count_include_pad=False``): the
  averaging weights at every position sum to one, so a per-channel shift
  cancels: ``pool(g n + b) - (g n + b) = g (pool(n) - n)``. ``norm1``'s
  bias drops out exactly and ``g * layer_scale1`` becomes one scale.
* ``IdentityMixer``: ``layer_scale1`` -> ``norm1``'s affine: exact.
* Downsampling norm weight -> the 3x3 zero-padded conv: exact. A norm
  *bias* there would not be exact (borders); the published models have
  none, and a norm with a bias is kept unfolded.
* ``res_scale1/2`` multiply the block input, which the block's norm also
  reads, so they cannot move into a weight.
* The stem norm normalises the stem conv's output: nothing to fold.
* ``RandomMixing``: nothing exact to fold (its norm's shift would become a
  constant map, not a weight).
* ConvMixer: each layer's first BatchNorm (eval: ``a * u + c``, after the
  activation) becomes a ``Scale`` ``a`` and its shift ``c`` moves into the
  following pointwise conv's bias (exact, 1x1); the second one feeds a
  zero-padded depthwise conv *and* a residual, so it stays.

Layout is left to the runtime (the trunk's ``channels_last``). Precision:
fp32 and bf16; under fp16 autocast the folded MLP squares before
StarReLU's scale (which now sits in ``fc2``), so it can overflow where
the unfused StarReLU does not: use bf16 or the unfused model for fp16.
"""

import logging

import torch
import torch.nn as nn

from .layers import LayerNorm2d, Scale, StarReLU

logger = logging.getLogger(__name__)


def norm_affine(norm):
    """``(weight, bias)`` of a per-channel-affine norm, else ``None``.

    Known norms: ``nn.Identity`` (no affine: ``(None, None)``), GroupNorm
    with one group (``GroupNorm1``) and ``LayerNorm2d``; either tensor may
    be ``None``.
    """
    if isinstance(norm, nn.Identity):
        return None, None
    if (isinstance(norm, nn.GroupNorm) and norm.num_groups == 1) or isinstance(
        norm, LayerNorm2d
    ):
        return norm.weight, norm.bias
    return None


def strip_affine(norm):
    """Remove a known norm's affine (it was folded elsewhere)."""
    if not isinstance(norm, nn.Identity):
        norm.weight = None
        norm.bias = None


def scale_vector(layer_scale):
    """The per-channel vector of a ``Scale``; ``None`` for ``nn.Identity``."""
    if isinstance(layer_scale, Scale):
        return layer_scale.scale.detach()
    if isinstance(layer_scale, nn.Identity):
        return None
    raise TypeError(f'expected Scale or nn.Identity, got {layer_scale}')


def _set_bias(layer, bias):
    if layer.bias is None:
        layer.bias = nn.Parameter(bias)
    else:
        layer.bias.copy_(bias)


@torch.no_grad()
def fold_input_affine(layer, weight, bias):
    """``layer(weight * n + bias)`` as ``layer'(n)``: 1x1 conv or Linear."""
    w = layer.weight.view(layer.weight.shape[0], -1)
    if bias is not None:
        extra = w @ bias.detach()
        _set_bias(layer, extra if layer.bias is None else layer.bias + extra)
    if weight is not None:
        w.mul_(weight.detach()[None, :])


@torch.no_grad()
def fold_output_scale(layer, scale):
    """``scale * layer(n)`` as ``layer'(n)`` (per output channel)."""
    if scale is None:
        return
    layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(scale)


@torch.no_grad()
def fold_star_relu_into(layer, act):
    """``layer(s * r + b)`` as ``layer'(r)`` (1x1 conv or Linear); returns
    the activation ``r = relu(h) ** 2`` (a frozen StarReLU)."""
    w = layer.weight.view(layer.weight.shape[0], -1)
    extra = act.bias * w.sum(dim=1)
    _set_bias(layer, extra if layer.bias is None else layer.bias + extra)
    w.mul_(act.scale)
    return frozen_star_relu(1.0, 0.0, act.scale)


def frozen_star_relu(scale, bias, like):
    act = StarReLU(scale, bias, scale_learnable=False, bias_learnable=False)
    return act.to(like.device, like.dtype)


def fold_norm_into(layer, norm):
    """Fold a known ``norm``'s affine into the 1x1 ``layer`` after it and
    strip it; returns whether it was known."""
    affine = norm_affine(norm)
    if affine is None:
        return False
    fold_input_affine(layer, *affine)
    strip_affine(norm)
    return True


def deploy_branch(fn, norm, layer_scale):
    """``(norm, layer_scale)`` after ``fn.fold_branch`` folded what it
    can of the branch ``layer_scale * fn(norm(x))``; ``fn`` without one
    runs unfused, with a log line."""
    fold = getattr(fn, 'fold_branch', None)
    if fold is None:
        logger.warning(
            '%s has no fold_branch(norm, layer_scale); it runs unfused',
            type(fn).__name__,
        )
        return norm, layer_scale
    return fold(norm, layer_scale)


@torch.no_grad()
def fold_downsampling(norm, conv):
    """Fold a bias-free known norm's weight into the zero-padded ``conv``
    after it; a norm bias stays (not exact at the borders)."""
    affine = norm_affine(norm)
    if (
        affine is None
        or affine[1] is not None
        or affine[0] is None
        or conv.padding_mode != 'zeros'
        or conv.groups != 1
    ):
        return
    conv.weight.mul_(affine[0].detach().view(1, -1, 1, 1))
    norm.weight = None


@torch.no_grad()
def fold_batchnorm_shift(bn, conv):
    """A BatchNorm (eval) before a 1x1 ``conv`` as a ``Scale``; its shift
    goes into ``conv``'s bias. Returns the ``Scale``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight, shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    fold_input_affine(conv, None, shift)
    module = Scale(scale.numel()).to(scale)
    module.scale.copy_(scale)
    return module


def fold_block(block):
    """A ``MetaFormerBlock``: each branch's norm affine and layer scale
    into its token mixer and MLP; drop path goes."""
    block.norm1, block.layer_scale1 = deploy_branch(
        block.token_mixer, block.norm1, block.layer_scale1
    )
    block.norm2, block.layer_scale2 = deploy_branch(
        block.mlp, block.norm2, block.layer_scale2
    )
    block.drop_path1 = nn.Identity()
    block.drop_path2 = nn.Identity()


def _linear_branch(first, last, norm, layer_scale):
    """Norm affine -> the 1x1 ``first``; layer scale -> ``last``."""
    fold_norm_into(first, norm)
    fold_output_scale(last, scale_vector(layer_scale))
    return norm, nn.Identity()


@torch.no_grad()
def fold_mlp(mlp, norm, layer_scale):
    """Norm affine -> ``fc1``; StarReLU's scale and bias and the layer
    scale -> ``fc2``."""
    if type(mlp.act) is StarReLU:
        mlp.act = fold_star_relu_into(mlp.fc2, mlp.act)
    return _linear_branch(mlp.fc1, mlp.fc2, norm, layer_scale)


def fold_attention(attn, norm, layer_scale):
    """Norm affine -> ``qkv``; layer scale -> ``proj``."""
    return _linear_branch(attn.qkv, attn.proj, norm, layer_scale)


@torch.no_grad()
def fold_sepconv(mixer, norm, layer_scale):
    """Norm affine -> ``pwconv1``; StarReLU's scale -> ``dwconv`` (its bias
    stays); layer scale -> ``pwconv2``."""
    fold_norm_into(mixer.pwconv1, norm)
    act = mixer.act1
    if (
        type(act) is StarReLU
        and mixer.dwconv.padding_mode == 'zeros'
        and float(act.scale) != 0.0
    ):
        mixer.dwconv.weight.mul_(act.scale)
        mixer.act1 = frozen_star_relu(
            1.0, float(act.bias / act.scale), act.scale
        )
    fold_output_scale(mixer.pwconv2, scale_vector(layer_scale))
    return norm, nn.Identity()


@torch.no_grad()
def fold_pooling(norm, layer_scale):
    """``ls * (pool(g n + b) - (g n + b)) = (ls g) (pool(n) - n)``."""
    affine = norm_affine(norm)
    if affine is None or (affine[0] is None and affine[1] is None):
        return norm, layer_scale
    weight = affine[0]
    scale = scale_vector(layer_scale)
    if weight is not None:
        scale = weight.detach() if scale is None else scale * weight
    strip_affine(norm)
    if scale is None:
        return norm, nn.Identity()
    folded = Scale(scale.numel()).to(scale)
    folded.scale.copy_(scale)
    return norm, folded


@torch.no_grad()
def fold_identity_mixer(norm, layer_scale):
    """``ls * (g n + b)``: the layer scale goes into the norm's affine."""
    affine = norm_affine(norm)
    scale = scale_vector(layer_scale)
    if affine is None or scale is None or isinstance(norm, nn.Identity):
        return norm, layer_scale
    weight, bias = affine
    if weight is None:
        norm.weight = nn.Parameter(scale.clone())
    else:
        weight.mul_(scale)
    if bias is not None:
        bias.mul_(scale)
    return norm, nn.Identity()


def fold_convmixer(blocks):
    """Each ConvMixer layer's first BatchNorm -> a ``Scale``, its shift
    into the pointwise conv's bias."""
    for residual, pwconv, _, _ in blocks:
        residual.fn[2] = fold_batchnorm_shift(residual.fn[2], pwconv)
