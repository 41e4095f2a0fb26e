"""ConvMixer ("Patches Are All You Need?") and its multi-scale adapter.

The trunk is isotropic: one ``[B, dim, H/p, W/p]`` map (floor division)::

    stem      conv p x p / p -> act -> BN
    blocks[i] x = x + BN(act(depthwise k x k 'same'(x)))
              x = BN(act(pointwise 1x1(x)))

Module names match ``timm.models.convmixer`` (``stem.0``, ``blocks.i.0.fn.0``
...), so the released timm-format weights load as they are.

Dense prediction needs strides 4, 8, 16 and 32, and p = 7 or 14 is not a
power of two: ``SimplePyramidAdapter`` (after ViTDet's simple feature
pyramid) resamples the one trunk map to the sizes a hierarchical MetaFormer
emits (``stage_output_sizes``, with ``resample_to``). Each level projects
with a 1x1 conv *before* resampling (cheaper at the fine levels), then
applies ``norm -> GELU -> 3x3 conv``. The adapter is new (in no ImageNet
checkpoint) and always trainable.
"""

import torch.nn as nn

from . import fuse
from .layers import DepthwiseConv2d, PointwiseConv2d
from .metaformer import (
    check_channels_last,
    run_blocks,
    stage_output_sizes,
    to_layout,
)
from .resample import resample_to


class Residual(nn.Module):
    """``x + fn(x)``; the attribute name ``fn`` matches timm's keys."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class ConvMixerTrunk(nn.Module):
    """The isotropic ConvMixer without its classifier.

    Args:
        dim (int): channels throughout.
        depth (int): number of mixer layers.
        kernel_size (int): depthwise kernel k.
        patch_size (int): patch embedding kernel and stride p.
        act_layer (callable): activation class (GELU or ReLU).
        in_channels (int): input image channels.
        channels_last (bool | None): memory layout after the stem, as for
            ``MetaFormerTrunk``.
        deploy (bool): build folded (``switch_to_deploy``).
    """

    def __init__(
        self,
        dim,
        depth,
        kernel_size,
        patch_size,
        act_layer=nn.GELU,
        in_channels=3,
        channels_last=None,
        deploy=False,
    ):
        super().__init__()
        check_channels_last(channels_last)
        self.channels_last = channels_last
        self.patch_size = patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dim, patch_size, stride=patch_size),
            act_layer(),
            nn.BatchNorm2d(dim),
        )
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    Residual(
                        nn.Sequential(
                            DepthwiseConv2d(dim, kernel_size, padding='same'),
                            act_layer(),
                            nn.BatchNorm2d(dim),
                        )
                    ),
                    PointwiseConv2d(dim, dim),
                    act_layer(),
                    nn.BatchNorm2d(dim),
                )
                for _ in range(depth)
            ]
        )
        self.with_cp = False
        self.deploy = False
        if deploy:
            self.switch_to_deploy()

    def switch_to_deploy(self):
        """Fold in place (``fuse.py``); returns ``self``."""
        if not self.deploy:
            fuse.fold_convmixer(self.blocks)
            self.deploy = True
        return self

    def set_with_cp(self, with_cp):
        self.with_cp = with_cp

    def forward(self, x):
        x = to_layout(self.stem(x), self.channels_last)
        return run_blocks(self.blocks, x, self.with_cp)


class SimplePyramidAdapter(nn.Module):
    """Turn one stride-p map into four maps at strides 4, 8, 16 and 32.

    Args:
        in_channels (int): trunk channels.
        out_channels (sequence[int]): channels of each level.
        norm_layer (callable): ``norm_layer(channels) -> nn.Module``.

    ``forward(x, image_size, levels)`` returns, for each ``i`` in
    ``levels`` (default all), ``[B, out_channels[i], H_i, W_i]`` with
    ``(H_i, W_i) = stage_output_sizes(*image_size)[i]``.
    """

    def __init__(self, in_channels, out_channels, norm_layer):
        super().__init__()
        self.projs = nn.ModuleList(
            nn.Conv2d(in_channels, c, 1, bias=False) for c in out_channels
        )
        self.refines = nn.ModuleList(
            nn.Sequential(
                norm_layer(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1)
            )
            for c in out_channels
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode='fan_out', nonlinearity='relu'
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x, image_size, levels=None):
        sizes = stage_output_sizes(*image_size, num_stages=len(self.projs))
        if levels is None:
            levels = range(len(self.projs))
        return [
            self.refines[i](resample_to(self.projs[i](x), sizes[i]))
            for i in levels
        ]
