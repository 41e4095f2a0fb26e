"""The generic MetaFormer in plain PyTorch.

One model covers PoolFormer v1/v2, IdentityFormer, RandFormer, ConvFormer and
CAFormer; they differ only in the layers passed in (``models/archs.py``).
Module names match ``timm.models.metaformer``::

    stem                  conv 7x7/4 (pad 2) -> norm          H/4
    stages[0]             blocks                              H/4
    stages[i], i = 1..3   downsample (norm -> conv 3x3/2, pad 1) -> blocks

    block:  x = res_scale1(x) + layer_scale1(drop_path(token_mixer(norm1(x))))
            x = res_scale2(x) + layer_scale2(drop_path(mlp(norm2(x))))

Parts a model does not have are ``nn.Identity``, so ``forward`` has no
``if`` for them.

``channels_last`` (trunk argument) sets the memory layout after the stem:
channels-last (``True``), NCHW-contiguous (``False``) or per device
(``None``, ``CHANNELS_LAST_BY_DEVICE``). Shapes are NCHW either way.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import cpu_kernels, fuse
from .capture import capturing_graph
from .layers import GELU, DropPath, PointwiseConv2d, Scale

# channels_last=None, per device type. cpu: measured (docs/benchmarks.md):
# oneDNN reads channels-last maps without reordering, and avg_pool2d with
# count_include_pad=False is ~10x faster on them. cuda: cuDNN's guidance
# (tensor-core convs, depthwise 7x7 in bf16/fp16), not measured here.
# Other devices: as the layers make it.
CHANNELS_LAST_BY_DEVICE = dict(cpu=True, cuda=True)


def stage_output_sizes(height, width, num_stages=4):
    """``[(H_i, W_i)]`` of every stage output for an input of ``H x W``:
    ``H_0 = floor((H - 3) / 4) + 1``, ``H_i = ceil(H_{i-1} / 2)`` (224 ->
    56, 28, 14, 7; any input of at least 32x32 works)."""
    h, w = (height - 3) // 4 + 1, (width - 3) // 4 + 1
    sizes = [(h, w)]
    for _ in range(num_stages - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class Mlp(nn.Module):
    """Channel MLP as two 1x1 convs: ``fc2(act(fc1(x)))``.

    The authors' ``nn.Linear`` weights ``[out, in]`` load by a reshape. In
    CPU training an exact GELU is recomputed in backward instead of kept
    (``cpu_kernels.gelu_pointwise``), unless a hook watches ``act`` or
    ``fc2`` (the fused call would bypass it).
    """

    def __init__(self, dim, hidden_dim, act_layer=nn.GELU, bias=True):
        super().__init__()
        self.fc1 = PointwiseConv2d(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.fc2 = PointwiseConv2d(hidden_dim, dim, bias=bias)

    def _recomputes_gelu(self, h):
        return (
            type(self.act) in (nn.GELU, GELU)
            and self.act.approximate == 'none'
            and type(self.fc2) is PointwiseConv2d
            and self.fc2.plain()
            and cpu_kernels.applies_to_training(
                h, self.fc2.weight, self.fc2.bias
            )
            and not cpu_kernels.has_hooks(self.act, self.fc2)
        )

    def forward(self, x):
        h = self.fc1(x)
        if self._recomputes_gelu(h):
            return cpu_kernels.gelu_pointwise(
                h, self.fc2.weight, self.fc2.bias
            )
        return self.fc2(self.act(h))

    def fold_branch(self, norm, layer_scale):
        return fuse.fold_mlp(self, norm, layer_scale)


class ChannelsLastMlp(Mlp):
    """``Mlp`` as ``nn.Linear`` over channels-last tokens: the references'
    arithmetic in attention stages, so features match timm bit for bit."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias)
        x = F.linear(self.act(x), self.fc2.weight.flatten(1), self.fc2.bias)
        return x.permute(0, 3, 1, 2)


class Stem(nn.Module):
    """Patch embedding: conv 7x7, stride 4, padding 2, optional norm."""

    def __init__(self, in_channels, out_channels, norm_layer=None):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 7, stride=4, padding=2
        )
        self.norm = norm_layer(out_channels) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class Downsampling(nn.Module):
    """Optional norm, then conv 3x3, stride 2, padding 1 (halves H and W)."""

    def __init__(self, in_channels, out_channels, norm_layer=None):
        super().__init__()
        self.norm = norm_layer(in_channels) if norm_layer else nn.Identity()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=2, padding=1
        )

    def forward(self, x):
        return self.conv(self.norm(x))

    def switch_to_deploy(self):
        fuse.fold_downsampling(self.norm, self.conv)


class MetaFormerBlock(nn.Module):
    """Norm, token mixer, residual; norm, channel MLP, residual.

    Args:
        dim (int): channels C of the ``[B, C, H, W]`` input and output.
        token_mixer (callable): ``token_mixer(dim) -> nn.Module``.
        mlp_layer (callable): ``mlp_layer(dim) -> nn.Module``.
        norm_layer (callable): ``norm_layer(dim) -> nn.Module``.
        drop_path (float): stochastic depth rate of this block.
        layer_scale_init_value (float | None): per-channel scale on each
            branch (PoolFormer v1); ``None`` for none.
        res_scale_init_value (float | None): per-channel scale on each
            shortcut (baselines, stages 3-4); ``None`` for none.
    """

    def __init__(
        self,
        dim,
        token_mixer,
        mlp_layer,
        norm_layer,
        drop_path=0.0,
        layer_scale_init_value=None,
        res_scale_init_value=None,
    ):
        super().__init__()
        identity = nn.Identity
        layer_scale = (
            partial(Scale, dim, layer_scale_init_value)
            if layer_scale_init_value is not None
            else identity
        )
        res_scale = (
            partial(Scale, dim, res_scale_init_value)
            if res_scale_init_value is not None
            else identity
        )
        self.norm1 = norm_layer(dim)
        self.token_mixer = token_mixer(dim)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else identity()
        self.layer_scale1 = layer_scale()
        self.res_scale1 = res_scale()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else identity()
        self.layer_scale2 = layer_scale()
        self.res_scale2 = res_scale()

    def forward(self, x):
        # out of place: hooks and callers may hold both operands
        x = self.res_scale1(x) + self.layer_scale1(
            self.drop_path1(self.token_mixer(self.norm1(x)))
        )
        x = self.res_scale2(x) + self.layer_scale2(
            self.drop_path2(self.mlp(self.norm2(x)))
        )
        return x

    def switch_to_deploy(self):
        fuse.fold_block(self)


def run_blocks(blocks, x, with_cp):
    """Run ``blocks`` in order; with ``with_cp`` each is checkpointed
    (non-reentrant: works with DDP and frozen inputs, and drop path draws
    the same mask on recompute)."""
    for block in blocks:
        if with_cp and x.requires_grad:
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class MetaFormerStage(nn.Module):
    """Optional downsampling followed by ``depth`` MetaFormer blocks.

    The downsample belongs to its stage, so "stage i" means the same for
    ``out_indices``, ``frozen_stages`` and the checkpoint keys. It exists
    when ``downsample`` says so (every stage but the first), never inferred
    from the channels, so strides always match ``feature_info``.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        depth,
        downsample_norm,
        drop_path_rates,
        with_cp=False,
        downsample=True,
        **block_kwargs,
    ):
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError(
                f'A stage without downsampling keeps its '
                f'channels, got {in_channels} -> '
                f'{out_channels}'
            )
        self.downsample = (
            Downsampling(in_channels, out_channels, downsample_norm)
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *[
                MetaFormerBlock(
                    out_channels, drop_path=drop_path_rates[j], **block_kwargs
                )
                for j in range(depth)
            ]
        )
        self.with_cp = with_cp

    def forward(self, x):
        return run_blocks(self.blocks, self.downsample(x), self.with_cp)


def per_stage(value, name, num_stages):
    """Expand one value to a list of ``num_stages``, or check a given list."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(
                f'{name} has {len(value)} entries but there are '
                f'{num_stages} stages: {value}'
            )
        return list(value)
    return [value] * num_stages


class MetaFormerTrunk(nn.Module):
    """Four-stage MetaFormer trunk returning every stage's NCHW output.

    Args:
        depths (sequence[int]): blocks per stage.
        dims (sequence[int]): channels per stage.
        token_mixers (callable | list[callable]): ``mixer(dim)`` per stage.
        norm_layers (callable | list[callable]): block norm per stage.
        mlp_act_layer (callable): activation class of the MLP.
        mlp_ratio (float): MLP hidden width over ``dim``.
        mlp_bias (bool): biases in the MLP's 1x1 convs.
        stem_norm (callable | None): norm after the stem conv.
        downsample_norm (callable | None): norm before each downsampling conv.
        layer_scale_init_values (float | None | list): per stage.
        res_scale_init_values (float | None | list): per stage.
        mlp_channels_last (bool | list[bool]): per stage, compute the MLP
            as Linear over channels-last tokens (``ChannelsLastMlp``).
        drop_path_rate (float): stochastic depth, linear over all blocks.
        in_channels (int): input image channels.
        with_cp (bool): checkpoint every block to save activation memory.
        channels_last (bool | None): memory layout after the stem;
            ``None`` chooses per device.
        deploy (bool): build folded (``switch_to_deploy``), so a folded
            checkpoint loads.

    ``forward`` returns ``[B, dims[i], H_i, W_i]`` per stage; ``num_stages``
    limits how many run. ``feature_info`` records each output's
    ``num_chs`` and ``reduction``.
    """

    def __init__(
        self,
        depths,
        dims,
        token_mixers,
        norm_layers,
        mlp_act_layer=nn.GELU,
        mlp_ratio=4,
        mlp_bias=False,
        stem_norm=None,
        downsample_norm=None,
        layer_scale_init_values=None,
        res_scale_init_values=None,
        mlp_channels_last=False,
        drop_path_rate=0.0,
        in_channels=3,
        with_cp=False,
        channels_last=None,
        deploy=False,
    ):
        super().__init__()
        check_channels_last(channels_last)
        self.channels_last = channels_last
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(
                f'depths {list(depths)} and dims {list(dims)} '
                'must have the same length'
            )
        token_mixers = per_stage(token_mixers, 'token_mixers', num_stages)
        norm_layers = per_stage(norm_layers, 'norm_layers', num_stages)
        layer_scales = per_stage(
            layer_scale_init_values, 'layer_scale_init_values', num_stages
        )
        res_scales = per_stage(
            res_scale_init_values, 'res_scale_init_values', num_stages
        )
        mlp_layouts = per_stage(
            mlp_channels_last, 'mlp_channels_last', num_stages
        )
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        self.stem = Stem(in_channels, dims[0], stem_norm)
        self.stages = nn.ModuleList()
        self.feature_info = []
        prev_dim, first_block, reduction = dims[0], 0, 4
        for i in range(num_stages):
            if i > 0:
                reduction *= 2
            self.stages.append(
                MetaFormerStage(
                    prev_dim,
                    dims[i],
                    depths[i],
                    downsample_norm,
                    rates[first_block : first_block + depths[i]],
                    with_cp=with_cp,
                    downsample=i > 0,  # stage 0 works at the stem's H/4
                    token_mixer=token_mixers[i],
                    mlp_layer=partial(
                        _mlp,
                        mlp_ratio=mlp_ratio,
                        act_layer=mlp_act_layer,
                        bias=mlp_bias,
                        channels_last=mlp_layouts[i],
                    ),
                    norm_layer=norm_layers[i],
                    layer_scale_init_value=layer_scales[i],
                    res_scale_init_value=res_scales[i],
                )
            )
            self.feature_info.append(
                dict(
                    num_chs=dims[i], reduction=reduction, module=f'stages.{i}'
                )
            )
            prev_dim = dims[i]
            first_block += depths[i]
        self.apply(_init_weights)
        self.deploy = False
        if deploy:
            self.switch_to_deploy()

    def switch_to_deploy(self):
        """Fold every block and downsampling in place (``fuse.py``);
        returns ``self``."""
        if not self.deploy:
            for module in self.modules():
                if isinstance(module, (MetaFormerBlock, Downsampling)):
                    module.switch_to_deploy()
            self.deploy = True
        return self

    def set_with_cp(self, with_cp):
        for stage in self.stages:
            stage.with_cp = with_cp

    def forward(self, x, num_stages=None):
        x = to_layout(self.stem(x), self.channels_last)
        outs = []
        for stage in self.stages[:num_stages]:
            x = stage(x)
            outs.append(x)
        return outs


def check_channels_last(value):
    """``channels_last`` must be ``None`` (per device), ``True`` or
    ``False`` (``1 == True`` in Python, so ints are refused by type)."""
    if value not in (None, True, False) or (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        raise ValueError(
            f'channels_last={value!r} is invalid; valid: None '
            '(per device), True, False'
        )


def to_layout(x, channels_last=None):
    """``x`` in the memory layout ``channels_last`` asks for.

    ``None``: ``CHANNELS_LAST_BY_DEVICE`` (on CPU only while the CPU
    kernels are on); under graph capture as it is (the compiler or the
    exporter's runtime chooses the layout; inductor's CPU code measured
    slower on channels-last maps, docs/benchmarks.md).
    """
    if channels_last is None:
        if capturing_graph() or (
            x.device.type == 'cpu' and not cpu_kernels.enabled()
        ):
            return x
        channels_last = CHANNELS_LAST_BY_DEVICE.get(x.device.type)
        if channels_last is None:
            return x
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _mlp(dim, mlp_ratio, act_layer, bias, channels_last):
    mlp_cls = ChannelsLastMlp if channels_last else Mlp
    return mlp_cls(dim, int(mlp_ratio * dim), act_layer=act_layer, bias=bias)


def _init_weights(module):
    """timm's init: truncated normal (std .02) for convs and linears."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
