"""Registered MetaFormer backbones: one generic class, families as presets.

``MetaFormer`` builds any MetaFormer from an arch dict of layer configs (see
``mmmetaformer/models/archs.py`` for the keys); its named archs are
``<family>_<size>``, e.g. ``caformer_s18``. Each family class
(``PoolFormer``, ``ConvFormer``, ...) only swaps in its own table of sizes
and family layer defaults, so ``PoolFormer(arch='s12')`` and
``MetaFormer(arch='poolformer_s12')`` are the same network, and an arch dict
passed to a family class only needs what differs from the family.
"""

from functools import partial

from mmengine.model import BaseModule

from ...registry import MODELS, register_public
from ..archs import (
    ARCH_KEYS,
    FAMILIES,
    GENERIC_DEFAULTS,
    METAFORMER_ARCHS,
    REQUIRED_ARCH_KEYS,
)
from ..core import MetaFormerTrunk
from ..core.metaformer import per_stage
from ..registration import build_norm
from .base import (
    DenseBackboneMixin,
    check_flag,
    reject_pretrained,
    reject_unknown_kwargs,
    resolve_arch,
)
from .convmixer import ConvMixer


def norm_factory(cfg):
    """``cfg`` -> ``f(channels) -> nn.Module``; ``None`` -> ``None``."""
    if cfg is None:
        return None
    return lambda channels: build_norm(cfg, channels)


def mixer_factory(cfg, where='arch token_mixer_cfg'):
    """``cfg`` -> ``f(dim) -> nn.Module`` via the registry.

    A config that cannot build for ``dim`` (unknown type, bad arguments, a
    head size that does not divide ``dim``) raises a ValueError naming
    ``where`` (the arch key), the value and ``dim``.
    """

    def build(dim):
        try:
            return MODELS.build(dict(cfg, dim=dim))
        except Exception as exc:
            raise ValueError(
                f'{where}={cfg!r} cannot build a token mixer '
                f'of dim {dim}: {exc}'
            ) from exc

    return build


def check_stage_sizes(owner, spec):
    """Every entry of ``depths`` and ``dims`` must be a positive int."""
    for key in ('depths', 'dims'):
        for i, value in enumerate(spec[key]):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value <= 0
            ):
                raise ValueError(
                    f'{owner} arch {key}[{i}]={value!r} must be '
                    f'a positive int ({key}={spec[key]})'
                )


@register_public
class MetaFormer(DenseBackboneMixin, MetaFormerTrunk, BaseModule):
    """A MetaFormer as an mmdet/mmseg backbone.

    Args:
        arch (str | dict): a name from ``arch_zoo`` or an arch dict.
        in_channels (int): input image channels. Default 3.
        out_indices (sequence[int]): stages to emit, from 0..3.
            Default all four.
        out_norm_cfg (dict | None): norm applied to each emitted output;
            GroupNorm with one group by default (the PoolFormer detection
            and segmentation models). ``None`` for none.
        frozen_stages (int): -1 freezes nothing; k freezes the stem and
            stages 0..k-1 (their downsampling included), also after
            ``train()``.
        norm_eval (bool): keep BatchNorm layers in eval mode while training.
        with_cp (bool): non-reentrant activation checkpointing per block.
        drop_path_rate (float): stochastic depth, linear over all blocks.
        init_cfg (dict | None): ``dict(type='Pretrained', checkpoint=...)``
            loads any published format (``format='auto'`` by default).
        channels_last (bool | None): memory layout inside the trunk:
            ``None`` (default) per device (channels-last on CPU and CUDA),
            ``True`` channels-last, ``False`` NCHW-contiguous. Outputs are
            contiguous NCHW either way.
        deploy (bool): build the folded inference model
            (``switch_to_deploy()``), which loads a folded checkpoint.
        pretrained (None): accepted only as ``None``: mmseg's
            EncoderDecoder passes ``model.pretrained`` here, and a string
            there is the base config's checkpoint for another backbone
            (an error that says so and how to fix it).

    Outputs are NCHW at strides 4, 8, 16, 32 with the stage dims as
    channels; ``out_channels`` lists the channels of the emitted ones.
    """

    arch_zoo = {
        f'{family}_{size}': spec
        for family, sizes in METAFORMER_ARCHS.items()
        for size, spec in sizes.items()
    }
    family_defaults = GENERIC_DEFAULTS
    family = None  # the presets below set theirs

    def __init__(
        self,
        arch,
        in_channels=3,
        out_indices=(0, 1, 2, 3),
        # read, never modified (mmdet's convention for cfg defaults)
        out_norm_cfg=dict(type='GN', num_groups=1),  # noqa: B006
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        drop_path_rate=0.0,
        init_cfg=None,
        channels_last=None,
        deploy=False,
        pretrained=None,
        **unknown_kwargs,
    ):
        owner = type(self).__name__
        reject_unknown_kwargs(owner, unknown_kwargs, MetaFormer.__init__)
        check_flag(owner, 'deploy', deploy)
        reject_pretrained(owner, pretrained)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(
                f'{owner} drop_path_rate={drop_path_rate} must be in [0, 1)'
            )
        spec = resolve_arch(
            owner,
            arch,
            self.arch_zoo,
            ARCH_KEYS,
            REQUIRED_ARCH_KEYS,
            self.family_defaults,
        )
        self.arch_settings = spec
        if len(spec['depths']) != 4 or len(spec['dims']) != 4:
            raise ValueError(
                f'{owner} arch needs 4 depths and 4 dims, got '
                f'{spec["depths"]} and {spec["dims"]}'
            )
        check_stage_sizes(owner, spec)
        mixer_cfgs = spec['token_mixer_cfg']
        mlp_act_cfg = spec['mlp_act_cfg']
        super().__init__(
            depths=spec['depths'],
            dims=spec['dims'],
            token_mixers=[
                mixer_factory(
                    c,
                    f'{owner} arch token_mixer_cfg'
                    + (
                        f'[{i}]'
                        if isinstance(mixer_cfgs, (list, tuple))
                        else ''
                    ),
                )
                for i, c in enumerate(
                    per_stage(mixer_cfgs, f'{owner} arch token_mixer_cfg', 4)
                )
            ],
            norm_layers=[
                norm_factory(c)
                for c in per_stage(
                    spec['norm_cfg'], f'{owner} arch norm_cfg', 4
                )
            ],
            mlp_act_layer=partial(MODELS.build, mlp_act_cfg),
            mlp_ratio=spec['mlp_ratio'],
            mlp_bias=spec['mlp_bias'],
            stem_norm=norm_factory(spec['stem_norm_cfg']),
            downsample_norm=norm_factory(spec['downsample_norm_cfg']),
            layer_scale_init_values=spec['layer_scale_init_value'],
            res_scale_init_values=spec['res_scale_init_value'],
            mlp_channels_last=spec['mlp_channels_last'],
            drop_path_rate=drop_path_rate,
            in_channels=in_channels,
            channels_last=channels_last,
            deploy=deploy,
        )
        self._setup_outputs(
            spec['dims'],
            out_indices,
            out_norm_cfg,
            frozen_stages,
            norm_eval,
            with_cp,
            init_cfg,
        )

    def stage_modules(self, i):
        return [self.stages[i]]

    def forward_outputs(self, x, indices):
        feats = MetaFormerTrunk.forward(self, x, num_stages=indices[-1] + 1)
        return [feats[i] for i in indices]


def _family(name, family):
    """A registered preset class over ``MetaFormer`` for one family."""
    cls = type(
        name,
        (MetaFormer,),
        {
            '__doc__': f'{name}: ``MetaFormer`` with the {family} layers. '
            f'Archs: {", ".join(METAFORMER_ARCHS[family])}; a dict arch '
            'overrides the family defaults.',
            'arch_zoo': METAFORMER_ARCHS[family],
            'family_defaults': dict(GENERIC_DEFAULTS, **FAMILIES[family]),
            'family': family,
            '__module__': __name__,
        },
    )
    return register_public(cls)


PoolFormer = _family('PoolFormer', 'poolformer')
PoolFormerV2 = _family('PoolFormerV2', 'poolformerv2')
IdentityFormer = _family('IdentityFormer', 'identityformer')
RandFormer = _family('RandFormer', 'randformer')
ConvFormer = _family('ConvFormer', 'convformer')
CAFormer = _family('CAFormer', 'caformer')

# family (as in arch names and config file names) -> registered type name,
# for tools and tests; every family of the arch tables, in their order.
FAMILY_CLASSES = {
    **{
        cls.family: cls.__name__
        for cls in (
            PoolFormer,
            PoolFormerV2,
            IdentityFormer,
            RandFormer,
            ConvFormer,
            CAFormer,
        )
    },
    ConvMixer.family: ConvMixer.__name__,
}
