"""Registered ConvMixer backbone: isotropic trunk + simple pyramid adapter.

See ``mmmetaformer/models/core/convmixer.py`` for the adapter design. The
four outputs have the sizes of a hierarchical MetaFormer's stages, so
necks and heads treat ConvMixer like the rest of the family.

"Stages" for ``frozen_stages``: the patch embedding is the stem and the
mixer layers are split into four consecutive groups of ``depth / 4``
(rounded up), stage ``i`` being group ``i``. The adapter is a new layer and
is never frozen.
"""

import math

from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule

from ...registry import register_public
from ..archs import CONVMIXER_ARCH_KEYS, CONVMIXER_ARCHS
from ..core import ConvMixerTrunk, SimplePyramidAdapter
from ..registration import build_norm
from .base import (
    DenseBackboneMixin,
    check_flag,
    reject_pretrained,
    reject_unknown_kwargs,
    resolve_arch,
)


@register_public
class ConvMixer(DenseBackboneMixin, ConvMixerTrunk, BaseModule):
    """ConvMixer as an mmdet/mmseg backbone emitting strides 4..32.

    Args:
        arch (str | dict): ``'768/32'``, ``'1024/20'``, ``'1536/20'`` (``_``
            works for ``/``), or a dict with ``dim, depth, kernel_size,
            patch_size, act_cfg``.
        adapter_channels (sequence[int] | None): channels of the four
            outputs. Default ``(dim/4, dim/2, dim, dim)``.
        adapter_norm_cfg (dict): norm inside each adapter level.
        in_channels, out_indices, out_norm_cfg, frozen_stages, norm_eval,
        with_cp, init_cfg, channels_last, deploy, pretrained: as for
            ``MetaFormer``.
            ``norm_eval`` matters here: the trunk uses BatchNorm.
    """

    arch_zoo = CONVMIXER_ARCHS
    family = 'convmixer'
    new_layer_prefixes = ('out_norms.', 'adapter.')

    def __init__(
        self,
        arch,
        adapter_channels=None,
        adapter_norm_cfg=dict(type='GN', num_groups=32),  # noqa: B006
        in_channels=3,
        out_indices=(0, 1, 2, 3),
        # read, never modified (mmdet's convention for cfg defaults)
        out_norm_cfg=dict(type='GN', num_groups=1),  # noqa: B006
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        init_cfg=None,
        channels_last=None,
        deploy=False,
        pretrained=None,
        **unknown_kwargs,
    ):
        owner = type(self).__name__
        reject_unknown_kwargs(owner, unknown_kwargs, ConvMixer.__init__)
        check_flag(owner, 'deploy', deploy)
        reject_pretrained(owner, pretrained)
        if isinstance(arch, str):
            arch = arch.replace('_', '/')
        spec = resolve_arch(
            owner,
            arch,
            self.arch_zoo,
            CONVMIXER_ARCH_KEYS,
            CONVMIXER_ARCH_KEYS,
        )
        self.arch_settings = spec
        dim = spec['dim']
        if adapter_channels is None:
            adapter_channels = (dim // 4, dim // 2, dim, dim)
        adapter_channels = tuple(adapter_channels)
        self.adapter_channels = adapter_channels
        if len(adapter_channels) != 4 or any(
            not isinstance(c, int) or c < 1 for c in adapter_channels
        ):
            raise ValueError(
                f'{owner} adapter_channels must be 4 positive '
                f'ints, got {adapter_channels}'
            )
        super().__init__(
            dim=dim,
            depth=spec['depth'],
            kernel_size=spec['kernel_size'],
            patch_size=spec['patch_size'],
            act_layer=lambda: build_activation_layer(spec['act_cfg']),
            in_channels=in_channels,
            channels_last=channels_last,
            deploy=deploy,
        )
        self.adapter = SimplePyramidAdapter(
            dim, adapter_channels, lambda c: build_norm(adapter_norm_cfg, c)
        )
        group = math.ceil(spec['depth'] / 4)
        self._stage_slices = [
            slice(i * group, (i + 1) * group) for i in range(4)
        ]
        self._setup_outputs(
            adapter_channels,
            out_indices,
            out_norm_cfg,
            frozen_stages,
            norm_eval,
            with_cp,
            init_cfg,
        )

    def stage_modules(self, i):
        return list(self.blocks[self._stage_slices[i]])

    def idle_modules(self):
        # Every output needs the whole trunk; only unused levels idle.
        return [
            module
            for i in range(4)
            if i not in self.out_indices
            for module in (self.adapter.projs[i], self.adapter.refines[i])
        ]

    def forward_outputs(self, x, indices):
        size = x.shape[-2:]
        return self.adapter(ConvMixerTrunk.forward(self, x), size, indices)
