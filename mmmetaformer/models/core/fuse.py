"""Deploy-time fusion of MetaFormer and ConvMixer trunks (inference only).

``fuse_trunk(trunk)`` rewrites a built (and loaded) trunk, in place, into
one that computes the same function with fewer passes over activations:
every per-channel affine map that sits next to a linear map is folded into
that map's weights, elementwise work is done in place on temporaries the
fused module made itself, and tensors are kept channels-last where that
measured faster. It is the RepVGG-style "switch to deploy" of this project.

Identities the folds rely on (``n`` a ``[B, C, H, W]`` map, ``g``/``b``
per-channel vectors, ``W`` a conv or linear weight)::

    W (g * n + b) = (W diag(g)) n + W b          1x1 conv / Linear: exact
    K*(g * n)     = (K diag(g)) * n               any conv with *zero*
                                                  padding: exact
    K*(n + b)    != K*n + (sum of K) b            k x k conv, k > 1, zero
                                                  padding: wrong on the
                                                  outer k // 2 rows/columns

Per part of a block (exact = equal in real arithmetic; the fp32 outputs
differ from the unfused model's by rounding only, < 1e-5 relative):

* ``norm2`` affine -> ``mlp.fc1``: exact (1x1).
* ``mlp.act`` StarReLU ``s * relu(h)**2 + b`` -> ``mlp.fc2``: exact (1x1):
  ``fc2(s r + b) = (s W2) r + b W2 1``; the activation becomes
  ``relu(h)**2``, computed in place.
* ``layer_scale2`` -> ``mlp.fc2`` rows and bias: exact.
* ``norm1`` affine -> ``SepConv.pwconv1`` / ``Attention.qkv``: exact.
* ``SepConv.act1`` scale -> ``SepConv.dwconv``: exact (zero padding).
* ``SepConv.act1`` bias -> ``dwconv``: **not exact** (7x7, zero padding:
  the borders would differ), so it stays an add, fused into the same
  in-place pass as the square.
* ``layer_scale1`` -> ``SepConv.pwconv2`` / ``Attention.proj``: exact.
* ``Pooling`` (``avg_pool(n) - n``, ``count_include_pad=False``): the
  averaging weights at every position sum to one, so a per-channel shift
  cancels: ``pool(g n + b) - (g n + b) = g (pool(n) - n)``. ``norm1``'s
  bias drops out exactly and ``g * layer_scale1`` becomes one per-channel
  scale applied in the pass that adds the residual.
* ``IdentityMixer``: ``layer_scale1`` -> ``norm1``'s affine: exact.
* Downsampling norm weight -> the 3x3 zero-padded conv: exact. A norm
  *bias* there would not be exact (borders); the published models have
  none, and a norm with a bias is kept unfolded.
* ``res_scale1/2`` multiply the block input, which the block's norm also
  reads, so they cannot move into a weight; they are applied in the
  residual pass (``out += r * x``), costing nothing extra.
* The stem norm normalises the stem conv's output: nothing to fold.
* ``RandomMixing``, and any mixer or activation this module does not
  know, run as their own (unchanged) modules with the norm before them
  unfolded; only what is next to a known linear map is folded.
* ConvMixer: each BatchNorm (after the activation) becomes a per-channel
  affine; the first one of a layer is fused with the residual add and
  its shift folded into the following pointwise conv's bias (exact, 1x1);
  the second one feeds a zero-padded depthwise conv *and* a residual, so
  it is applied as one in-place pass (its shift cannot fold, see above).

Layout: with ``channels_last=True`` (default) the stem converts the image
to channels-last memory and every map stays so (shapes are still NCHW).
oneDNN's convs then read their input without reordering it, the channel
LayerNorm needs no transposing copy, and PyTorch's channels-last
``avg_pool2d`` (with ``count_include_pad=False``) is ~10x faster than its
NCHW kernel on CPU. Measured with 2 threads at 512x512 (CPU time), fused
against the unfused model: PoolFormer-S12 0.67x (0.97x in NCHW memory),
ConvFormer-S18 0.87x (0.96x). Outputs are NCHW-shaped, channels-last
tensors; ``.contiguous()`` them if a consumer needs NCHW-contiguous memory.

Precision: fp32 and bf16. Under fp16 autocast the folded MLP computes
``relu(h) ** 2`` before StarReLU's scale (which now sits in ``fc2``), so
it can overflow where the unfused StarReLU (which squares in fp32) does
not; use bf16 or the unfused model for fp16.

The fused trunk is an ordinary module tree: forward hooks on any module
fire and see that module's final output (fused modules never modify a
tensor after a module returned it), and it traces under ``torch.compile``
and ``torch.onnx.export``. It is inference-only: its blocks raise in
training mode, drop path is gone, and its state dict is in a fused layout
that no model loads (``load_state_dict`` into a fused trunk raises). Keep
the original checkpoint; fusing is a one-way switch on one instance.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .convmixer import ConvMixerTrunk, Residual
from .layers import (GroupNorm1, LayerNorm2d, Mlp, Scale, StarReLU,
                     _flat_layout, is_exact_gelu)
from .metaformer import MetaFormerTrunk
from .mixers import Attention, IdentityMixer, Pooling, SepConv

__all__ = ['fuse_trunk', 'is_fused']

_FUSED_ATTR = '_mmmetaformer_fused'


def is_fused(module):
    """Whether ``fuse_trunk`` has rewritten ``module``."""
    return getattr(module, _FUSED_ATTR, False)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _frozen(tensor):
    """A parameter holding ``tensor`` (detached) that takes no gradient."""
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


def _optional(tensor):
    return None if tensor is None else _frozen(tensor)


def _vector(module, dim, ref):
    """The per-channel vector of a ``Scale`` (ones for ``nn.Identity``)."""
    if isinstance(module, Scale):
        return module.scale.detach().reshape(-1)
    if isinstance(module, nn.Identity):
        return torch.ones(dim, dtype=ref.dtype, device=ref.device)
    raise TypeError(f'expected Scale or nn.Identity, got {type(module)}')


def _norm_spec(norm):
    """``(kind, eps, weight, bias)`` of a known block norm, else ``None``.

    ``kind`` is ``'gn1'`` (one group over (C, H, W): ``GroupNorm1`` or any
    ``nn.GroupNorm`` with one group) or ``'ln2d'`` (``LayerNorm2d``, over C
    per position); weight and bias are detached tensors or ``None``.
    """
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == 1:
        kind = 'gn1'
    elif isinstance(norm, LayerNorm2d):
        kind = 'ln2d'
    else:
        return None
    detach = (lambda t: None if t is None else t.detach())
    return kind, norm.eps, detach(norm.weight), detach(norm.bias)


def _normalize(x, kind, eps, channels, weight=None, bias=None):
    """The norm ``kind`` of NCHW ``x`` (``channels`` = C), optional affine.

    For ``'ln2d'`` on a channels-last tensor the permuted view is already
    contiguous, so ``F.layer_norm`` reads it without a copy. ``channels``
    is a Python int so that exporters see a constant shape.
    """
    if kind == 'gn1':
        return F.group_norm(x, 1, weight, bias, eps)
    out = F.layer_norm(x.permute(0, 2, 3, 1), (channels, ), weight, bias,
                       eps)
    return out.permute(0, 3, 1, 2)


def _pointwise(x, weight, bias=None):
    """1x1 conv of NCHW ``x`` with a 2-D ``weight [out, in]``.

    ``F.conv2d`` (oneDNN on CPU) reads channels-last input as it is and
    measured faster than a GEMM over the tokens (``F.linear``) with 2
    threads: 0.88x the time for ConvFormer-S18 at 512x512.
    """
    return F.conv2d(x, weight[:, :, None, None], bias)


def _add_residual_(out, shortcut, res_scale):
    """``out += res_scale * shortcut`` in place on ``out`` (a temporary)."""
    if res_scale is None:
        return out.add_(shortcut)
    return out.addcmul_(shortcut, res_scale.view(-1, 1, 1))


def _squared_relu_(h):
    """``relu(h) ** 2`` in place on the temporary ``h``."""
    h = h.relu_()
    return h.mul_(h)


def _check_eval(module):
    if module.training:
        raise RuntimeError(
            f'{type(module).__name__} is a fused (deploy) module and runs '
            'in eval mode only; train an unfused model and fuse it after')


# ---------------------------------------------------------------------------
# fused token-mixer residuals: x -> res_scale1 * x + layer_scale1 * mixer(norm1(x))
# ---------------------------------------------------------------------------
class _FusedResidual(nn.Module):
    """Base of the fused residual branches: norm settings and res scale."""

    def __init__(self, norm_kind, eps, channels, res_scale):
        super().__init__()
        self.norm_kind = norm_kind
        self.eps = eps
        self.channels = channels
        self.res_scale = _optional(res_scale)

    def normalize(self, x, weight=None, bias=None):
        return _normalize(x, self.norm_kind, self.eps, self.channels, weight,
                          bias)

    def extra_repr(self):
        return (f'{self.channels}, norm={self.norm_kind}, eps={self.eps}')


class FusedPoolingResidual(_FusedResidual):
    """``r * x + s * (avg_pool(n) - n)`` with ``n`` the affine-free norm.

    ``s = norm1.weight * layer_scale1``; ``norm1.bias`` cancels (see the
    module docstring).
    """

    def __init__(self, norm_kind, eps, channels, pool_size, scale, res_scale):
        super().__init__(norm_kind, eps, channels, res_scale)
        self.pool_size = pool_size
        self.scale = _frozen(scale)

    def forward(self, x):
        n = self.normalize(x)
        out = F.avg_pool2d(n, self.pool_size, 1, self.pool_size // 2,
                           count_include_pad=False)
        out = out.sub_(n).mul_(self.scale.view(-1, 1, 1))
        return _add_residual_(out, x, self.res_scale)


class FusedNormResidual(_FusedResidual):
    """IdentityMixer: ``r * x + norm(x)`` with ``layer_scale1`` in the norm's
    affine (``weight * ls``, ``bias * ls``)."""

    def __init__(self, norm_kind, eps, channels, weight, bias, res_scale):
        super().__init__(norm_kind, eps, channels, res_scale)
        self.weight = _optional(weight)
        self.bias = _optional(bias)

    def forward(self, x):
        out = self.normalize(x, self.weight, self.bias)
        return _add_residual_(out, x, self.res_scale)


class FusedSepConvResidual(_FusedResidual):
    """``r * x + pw2'(dw'(relu(pw1'(n))**2 + b))``.

    ``pw1'`` has ``norm1``'s affine folded in, ``dw'`` StarReLU's scale and
    ``pw2'`` ``layer_scale1``; StarReLU's bias ``b`` cannot fold into the
    zero-padded depthwise conv exactly, so it is added in the pass that
    squares.
    """

    def __init__(self, norm_kind, eps, channels, pw1_weight, pw1_bias, act_bias,
                 dw_weight, dw_bias, pw2_weight, pw2_bias, res_scale):
        super().__init__(norm_kind, eps, channels, res_scale)
        self.pw1_weight = _frozen(pw1_weight)
        self.pw1_bias = _optional(pw1_bias)
        self.act_bias = _frozen(act_bias)
        self.dw_weight = _frozen(dw_weight)
        self.padding = dw_weight.shape[-1] // 2
        self.dw_bias = _optional(dw_bias)
        self.pw2_weight = _frozen(pw2_weight)
        self.pw2_bias = _optional(pw2_bias)

    def forward(self, x):
        n = self.normalize(x)
        h = _squared_relu_(_pointwise(n, self.pw1_weight, self.pw1_bias))
        h = h.add_(self.act_bias)
        h = F.conv2d(h, self.dw_weight, self.dw_bias, padding=self.padding,
                     groups=self.dw_weight.shape[0])
        out = _pointwise(h, self.pw2_weight, self.pw2_bias)
        return _add_residual_(out, x, self.res_scale)


class FusedAttentionResidual(_FusedResidual):
    """``r * x + proj'(attention(qkv'(n)))`` over the ``H*W`` tokens.

    ``qkv'`` has ``norm1``'s affine folded in, ``proj'`` ``layer_scale1``.
    On a channels-last map the tokens are a free view.
    """

    def __init__(self, norm_kind, eps, channels, head_dim, qkv_weight, qkv_bias,
                 proj_weight, proj_bias, res_scale):
        super().__init__(norm_kind, eps, channels, res_scale)
        self.head_dim = head_dim
        self.qkv_weight = _frozen(qkv_weight)
        self.qkv_bias = _optional(qkv_bias)
        self.proj_weight = _frozen(proj_weight)
        self.proj_bias = _optional(proj_bias)

    def forward(self, x):
        B, C, H, W = x.shape
        n = self.normalize(x)
        tokens = n.permute(0, 2, 3, 1).reshape(B, H * W, C)
        qkv = F.linear(tokens, self.qkv_weight, self.qkv_bias)
        qkv = qkv.view(B, H * W, 3, self.channels // self.head_dim,
                       self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = F.linear(out.transpose(1, 2).reshape(B, H * W, C),
                       self.proj_weight, self.proj_bias)
        out = out.view(B, H, W, C).permute(0, 3, 1, 2)
        return _add_residual_(out, x, self.res_scale)


class GenericResidual(nn.Module):
    """``r * x + ls * fn(norm(x))`` with the original ``norm`` and ``fn``.

    For parts with nothing to fold (``RandomMixing``) or unknown ones: the
    modules run unchanged, and their outputs are never modified (the
    scaled branch and the sum are new tensors).
    """

    def __init__(self, norm, fn, layer_scale, res_scale):
        super().__init__()
        self.norm = norm
        self.fn = fn
        self.layer_scale = _optional(layer_scale)
        self.res_scale = _optional(res_scale)

    def forward(self, x):
        branch = self.fn(self.norm(x))
        if self.layer_scale is not None:
            # a new tensor of our own: the residual may go in place
            branch = branch * self.layer_scale.view(-1, 1, 1)
            return _add_residual_(branch, x, self.res_scale)
        if self.res_scale is None:
            return x + branch
        return torch.addcmul(branch, x, self.res_scale.view(-1, 1, 1))


# ---------------------------------------------------------------------------
# fused channel MLP residual: x -> res_scale2 * x + layer_scale2 * mlp(norm2(x))
# ---------------------------------------------------------------------------
class FusedMlpResidual(_FusedResidual):
    """``r * x + fc2'(act'(fc1'(n)))``.

    ``fc1'`` has ``norm2``'s affine folded in. With StarReLU, ``act'`` is
    ``relu(h) ** 2`` and StarReLU's scale and bias live in ``fc2'`` (with
    ``layer_scale2``); with GELU, ``act'`` is GELU. Any other activation
    runs as its original module (``act``).
    """

    def __init__(self, norm_kind, eps, channels, fc1_weight, fc1_bias, act,
                 fc2_weight, fc2_bias, res_scale):
        super().__init__(norm_kind, eps, channels, res_scale)
        self.fc1_weight = _frozen(fc1_weight)
        self.fc1_bias = _optional(fc1_bias)
        self.fc2_weight = _frozen(fc2_weight)
        self.fc2_bias = _optional(fc2_bias)
        if isinstance(act, str):
            self.act_kind, self.act = act, None
        else:
            self.act_kind, self.act = 'module', act

    def forward(self, x):
        n = self.normalize(x)
        h = _pointwise(n, self.fc1_weight, self.fc1_bias)
        if self.act_kind == 'squared_relu':
            h = _squared_relu_(h)
        elif self.act_kind == 'gelu':
            h = _act_(h, 'gelu')
        else:
            h = self.act(h)
        out = _pointwise(h, self.fc2_weight, self.fc2_bias)
        return _add_residual_(out, x, self.res_scale)

    def extra_repr(self):
        return f'{super().extra_repr()}, act={self.act_kind}'


class FusedMetaFormerBlock(nn.Module):
    """A fused block: ``mlp_residual(mixer_residual(x))``.

    Each child returns the block's running value after its residual (not a
    branch alone), so a hook on ``mixer_residual`` sees ``x`` after the
    token-mixing residual and one on the block its output.
    """

    def __init__(self, mixer_residual, mlp_residual):
        super().__init__()
        self.mixer_residual = mixer_residual
        self.mlp_residual = mlp_residual

    def forward(self, x):
        _check_eval(self)
        return self.mlp_residual(self.mixer_residual(x))


class FusedDownsampling(nn.Module):
    """Affine-free norm, then the conv with the norm's weight folded in."""

    def __init__(self, norm_kind, eps, conv):
        super().__init__()
        self.norm_kind = norm_kind
        self.eps = eps
        self.conv = conv

    def forward(self, x):
        return self.conv(
            _normalize(x, self.norm_kind, self.eps, self.conv.in_channels))

    def extra_repr(self):
        return f'norm={self.norm_kind}, eps={self.eps}'


class ChannelsLastStem(nn.Module):
    """The stem's ``conv`` and ``norm``, fed a channels-last image.

    Every later map inherits the layout from the stem conv's output.
    """

    def __init__(self, stem):
        super().__init__()
        self.conv = stem.conv
        self.norm = stem.norm

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.conv(x))


# ---------------------------------------------------------------------------
# building the fused modules from an unfused block
# ---------------------------------------------------------------------------
def _weight2d(module):
    """``[out, in]`` weight of a 1x1 ``nn.Conv2d`` or an ``nn.Linear``."""
    return module.weight.detach().flatten(1)


def _bias(module):
    return None if module.bias is None else module.bias.detach()


def _fold_input_affine(weight, bias, scale, shift):
    """``W (scale * n + shift) + b`` as ``W' n + b'`` (2-D ``W``)."""
    new_bias = bias
    if shift is not None:
        extra = weight @ shift
        new_bias = extra if bias is None else bias + extra
    if scale is not None:
        weight = weight * scale[None, :]
    return weight, new_bias


def _fold_output_scale(weight, bias, scale):
    """``scale * (W n + b)`` as ``W' n + b'`` (2-D ``W``)."""
    weight = weight * scale[:, None]
    return weight, None if bias is None else bias * scale


def _res_scale(block):
    module = block.res_scale1, block.res_scale2
    return tuple(m.scale.detach() if isinstance(m, Scale) else None
                 for m in module)


def _layer_scale(module, dim, ref):
    return _vector(module, dim, ref) if isinstance(
        module, (Scale, nn.Identity)) else None


def _fuse_mixer(block, dim, res_scale):
    norm = _norm_spec(block.norm1)
    mixer = block.token_mixer
    ref = next(block.parameters())
    layer_scale = _layer_scale(block.layer_scale1, dim, ref)
    if norm is None or layer_scale is None:
        return None
    kind, eps, weight, bias = norm
    ones = torch.ones(dim, dtype=ref.dtype, device=ref.device)
    weight = ones if weight is None else weight
    if type(mixer) is Pooling:
        return FusedPoolingResidual(kind, eps, dim, mixer.pool_size,
                                    weight * layer_scale, res_scale)
    if type(mixer) is IdentityMixer:
        return FusedNormResidual(kind, eps, dim, weight * layer_scale,
                                 None if bias is None else bias * layer_scale,
                                 res_scale)
    if type(mixer) is SepConv and type(mixer.act1) is StarReLU and \
            mixer.dwconv.padding_mode == 'zeros' and \
            float(mixer.act1.scale) != 0.0:
        pw1_w, pw1_b = _fold_input_affine(_weight2d(mixer.pwconv1),
                                          _bias(mixer.pwconv1), weight, bias)
        act = mixer.act1
        dw_w = mixer.dwconv.weight.detach() * act.scale.detach()
        dw_b = _bias(mixer.dwconv)
        pw2_w, pw2_b = _fold_output_scale(_weight2d(mixer.pwconv2),
                                          _bias(mixer.pwconv2), layer_scale)
        # s relu^2 + b = s (relu^2 + b / s); s goes into the depthwise
        # weights (exact with zero padding), b / s stays an add
        return FusedSepConvResidual(kind, eps, dim, pw1_w, pw1_b,
                                    act.bias.detach() / act.scale.detach(),
                                    dw_w, dw_b, pw2_w, pw2_b, res_scale)
    if type(mixer) is Attention:
        qkv_w, qkv_b = _fold_input_affine(_weight2d(mixer.qkv),
                                          _bias(mixer.qkv), weight, bias)
        proj_w, proj_b = _fold_output_scale(_weight2d(mixer.proj),
                                            _bias(mixer.proj), layer_scale)
        return FusedAttentionResidual(kind, eps, dim, mixer.head_dim, qkv_w,
                                      qkv_b, proj_w, proj_b, res_scale)
    return None


def _fuse_mlp(block, dim, res_scale):
    norm = _norm_spec(block.norm2)
    mlp = block.mlp
    ref = next(block.parameters())
    layer_scale = _layer_scale(block.layer_scale2, dim, ref)
    if norm is None or layer_scale is None or not isinstance(mlp, Mlp):
        return None
    kind, eps, weight, bias = norm
    fc1_w, fc1_b = _fold_input_affine(_weight2d(mlp.fc1), _bias(mlp.fc1),
                                      weight, bias)
    fc2_w, fc2_b = _weight2d(mlp.fc2), _bias(mlp.fc2)
    act = mlp.act
    if type(act) is StarReLU:
        # fc2(s * r + b) = (s W2) r + (b2 + b W2 1), r = relu(h) ** 2
        scale, shift = act.scale.detach(), act.bias.detach()
        extra = shift * fc2_w.sum(dim=1)
        fc2_b = extra if fc2_b is None else fc2_b + extra
        fc2_w = fc2_w * scale
        act = 'squared_relu'
    elif is_exact_gelu(act):
        act = 'gelu'
    fc2_w, fc2_b = _fold_output_scale(fc2_w, fc2_b, layer_scale)
    return FusedMlpResidual(kind, eps, dim, fc1_w, fc1_b, act, fc2_w, fc2_b,
                            res_scale)


def _scaled_branch_parts(block, which):
    """``(norm, fn, layer_scale)`` modules of residual ``which`` (1 or 2)."""
    fn = block.token_mixer if which == 1 else block.mlp
    norm = getattr(block, f'norm{which}')
    layer_scale = getattr(block, f'layer_scale{which}')
    return norm, fn, layer_scale


def fuse_block(block):
    """A ``FusedMetaFormerBlock`` computing ``block`` (eval) with folds.

    Parts this module does not know stay as their original modules in a
    ``GenericResidual``; see the module docstring for what folds.
    """
    dim = block.norm1.weight.shape[0] if getattr(
        block.norm1, 'weight', None) is not None else None
    if dim is None:
        dim = _weight2d(block.mlp.fc2).shape[0]
    res_scales = _res_scale(block)
    parts = []
    for which, builder in ((1, _fuse_mixer), (2, _fuse_mlp)):
        fused = builder(block, dim, res_scales[which - 1])
        if fused is None:
            norm, fn, layer_scale = _scaled_branch_parts(block, which)
            scale = (layer_scale.scale.detach().reshape(-1)
                     if isinstance(layer_scale, Scale) else None)
            if not isinstance(layer_scale, (Scale, nn.Identity)):
                fn = nn.Sequential(fn, layer_scale)
            fused = GenericResidual(norm, fn, scale, res_scales[which - 1])
        parts.append(fused)
    return FusedMetaFormerBlock(*parts)


def fuse_downsampling(downsample):
    """Fold a bias-free norm's weight into the following zero-padded conv.

    Returns the module unchanged when there is no norm, an unknown one, or
    a norm bias (not exact at the borders, see the module docstring).
    """
    norm = _norm_spec(getattr(downsample, 'norm', None))
    conv = getattr(downsample, 'conv', None)
    if norm is None or not isinstance(conv, nn.Conv2d) or \
            conv.padding_mode != 'zeros' or conv.groups != 1:
        return downsample
    kind, eps, weight, bias = norm
    if bias is not None:
        return downsample
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      conv.stride, conv.padding, conv.dilation,
                      bias=conv.bias is not None).to(conv.weight)
    fused.weight = _frozen(conv.weight.detach() *
                           (1 if weight is None else weight.view(1, -1, 1, 1)))
    if conv.bias is not None:
        fused.bias = _frozen(conv.bias)
    return FusedDownsampling(kind, eps, fused)


def _reject_loading(module, *args, **kwargs):
    raise RuntimeError(
        'This model was fused for deployment (switch_to_deploy / '
        'fuse_trunk): its parameters are in a fused layout. Load weights '
        'into an unfused model, then fuse it.')


@torch.no_grad()
def fuse_metaformer(trunk, channels_last=True):
    """Fuse a ``MetaFormerTrunk`` (or a subclass) in place; returns it."""
    for stage in trunk.stages:
        stage.downsample = fuse_downsampling(stage.downsample)
        stage.blocks = nn.Sequential(*[fuse_block(b) for b in stage.blocks])
    if channels_last:
        trunk.stem = ChannelsLastStem(trunk.stem)
    return trunk


@torch.no_grad()
def fuse_trunk(trunk, channels_last=True):
    """Rewrite ``trunk`` in place for inference; returns it (in eval mode).

    Args:
        trunk (MetaFormerTrunk | ConvMixerTrunk): a built model with its
            weights loaded (a registered backbone is one).
        channels_last (bool): keep activations in channels-last memory
            (faster on CPU, see the module docstring).

    Raises:
        TypeError: ``trunk`` is neither trunk type.
        RuntimeError: it is fused already.
    """
    if is_fused(trunk):
        raise RuntimeError(f'{type(trunk).__name__} is already fused')
    if isinstance(trunk, MetaFormerTrunk):
        fuse_metaformer(trunk, channels_last)
    elif isinstance(trunk, ConvMixerTrunk):
        fuse_convmixer(trunk, channels_last)
    else:
        raise TypeError(f'fuse_trunk takes a MetaFormerTrunk or '
                        f'ConvMixerTrunk, got {type(trunk).__name__}')
    trunk.eval()
    trunk.requires_grad_(False)
    setattr(trunk, _FUSED_ATTR, True)
    trunk._register_load_state_dict_pre_hook(_reject_loading)
    return trunk


class FusedConvMixerLayer(nn.Module):
    """One ConvMixer layer with its BatchNorms (eval) folded.

    Unfused::

        y = x + bn1(act(dwconv(x)))          bn(u) = a * u + c (eval)
        out = bn2(act(pwconv(y)))

    Fused: ``bn1``'s shift ``c1`` moves into ``pwconv``'s bias (exact,
    1x1), its scale is applied in the residual pass (``y = x + a1 * u``,
    one pass for what was two), activations run in place on the conv
    outputs, and ``bn2`` is one pass (``a2 * v + c2``): its shift cannot
    fold into the next layer's zero-padded depthwise conv exactly, and the
    residual needs ``out`` itself.
    """

    def __init__(self, layer):
        super().__init__()
        residual, pwconv, act2, bn2 = layer
        dwconv, act1, bn1 = residual.fn
        scale1, shift1 = _batchnorm_affine(bn1)
        scale2, shift2 = _batchnorm_affine(bn2)
        self.dw_weight = _frozen(dwconv.weight)
        self.dw_bias = _optional(_bias(dwconv))
        self.padding = dwconv.kernel_size[0] // 2
        self.act1, self.act2 = _act_kind(act1), _act_kind(act2)
        self.scale1 = _frozen(scale1)
        pw_weight, pw_bias = _fold_input_affine(_weight2d(pwconv),
                                                _bias(pwconv), None, shift1)
        self.pw_weight = _frozen(pw_weight)
        self.pw_bias = _optional(pw_bias)
        self.scale2 = _frozen(scale2)
        self.shift2 = _frozen(shift2)

    def forward(self, x):
        _check_eval(self)
        u = F.conv2d(x, self.dw_weight, self.dw_bias, padding=self.padding,
                     groups=self.dw_weight.shape[0])
        u = _act_(u, self.act1).mul_(self.scale1.view(-1, 1, 1)).add_(x)
        v = _act_(_pointwise(u, self.pw_weight, self.pw_bias), self.act2)
        return v.mul_(self.scale2.view(-1, 1, 1)).add_(
            self.shift2.view(-1, 1, 1))


def _batchnorm_affine(bn):
    """``(a, c)`` with ``bn(u) = a * u + c`` in eval mode."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
        raise TypeError(f'expected a BatchNorm2d with running stats, got '
                        f'{bn}')
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    shift = -bn.running_mean.detach() * scale
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
        shift = shift * bn.weight.detach()
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def _act_kind(act):
    if type(act) is nn.ReLU:
        return 'relu'
    if is_exact_gelu(act):
        return 'gelu'
    raise TypeError(f'ConvMixer fusion supports ReLU and GELU, got {act}')


def _act_(x, kind):
    """The activation ``kind`` in place on the temporary ``x``.

    GELU runs on the dense view (``_flat_layout``): its CPU kernel is
    slower on channels-last strides.
    """
    if kind == 'relu':
        return x.relu_()
    torch.ops.aten.gelu_(_flat_layout(x)[0])
    return x


class ChannelsLastInput(nn.Module):
    """Run ``module`` on a channels-last copy of its input."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.contiguous(memory_format=torch.channels_last))


@torch.no_grad()
def fuse_convmixer(trunk, channels_last=True):
    """Fuse a ``ConvMixerTrunk`` in place (``FusedConvMixerLayer``)."""
    trunk.blocks = nn.Sequential(
        *[FusedConvMixerLayer(layer) for layer in trunk.blocks])
    if channels_last:
        trunk.stem = ChannelsLastInput(trunk.stem)
    return trunk
