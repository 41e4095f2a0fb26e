"""Every published MetaFormer variant, as data.

A family is a dict of layer configs shared by its sizes; a size adds
``depths`` and ``dims`` (and any per-size override). ``METAFORMER_ARCHS``
maps family -> size -> the full arch dict that ``MetaFormer`` builds from.
Facts from "MetaFormer Is Actually What You Need for Vision" (v1) and
"MetaFormer Baselines for Vision" (the rest).

Arch dict keys (``ARCH_KEYS``):
    depths, dims: blocks and channels per stage (required).
    token_mixer_cfg: a mixer config, or a list of four (one per stage).
    norm_cfg: block norm config, or a list of four.
    mlp_act_cfg, mlp_ratio, mlp_bias: the channel MLP.
    stem_norm_cfg, downsample_norm_cfg: norm after the stem conv / before
        each downsampling conv (``None`` for none).
    layer_scale_init_value, res_scale_init_value: a value, ``None``, or a
        list of four.
    mlp_channels_last: bool or list of four; run the MLP as Linear on
        channels-last tokens (attention stages, for exact reference parity).
"""

ARCH_KEYS = (
    'depths',
    'dims',
    'token_mixer_cfg',
    'norm_cfg',
    'mlp_act_cfg',
    'mlp_ratio',
    'mlp_bias',
    'stem_norm_cfg',
    'downsample_norm_cfg',
    'layer_scale_init_value',
    'res_scale_init_value',
    'mlp_channels_last',
)
REQUIRED_ARCH_KEYS = ('depths', 'dims', 'token_mixer_cfg', 'norm_cfg')

# Defaults of any arch dict (the generic MetaFormer's family).
GENERIC_DEFAULTS = dict(
    mlp_act_cfg=dict(type='GELU'),
    mlp_ratio=4,
    mlp_bias=False,
    stem_norm_cfg=None,
    downsample_norm_cfg=None,
    layer_scale_init_value=None,
    res_scale_init_value=None,
    mlp_channels_last=False,
)

POOLFORMER_SIZES = dict(
    s12=dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512]),
    s24=dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512]),
    s36=dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512]),
    m36=dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768]),
    m48=dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768]),
)
CONVFORMER_SIZES = dict(
    s18=dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512]),
    s36=dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512]),
    m36=dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576]),
    b36=dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768]),
)

# The baselines share stem/downsampling norms, the StarReLU MLP without bias
# and residual scales in stages 3-4.
_CHANNEL_LN = dict(type='LayerNorm2d', eps=1e-6, bias=False)
_GLOBAL_GN = dict(type='GroupNorm1', eps=1e-6, bias=False)
_BASELINE = dict(
    stem_norm_cfg=_CHANNEL_LN,
    downsample_norm_cfg=_CHANNEL_LN,
    mlp_act_cfg=dict(type='StarReLU'),
    mlp_bias=False,
    layer_scale_init_value=None,
    res_scale_init_value=[None, None, 1.0, 1.0],
)
_POOL = dict(type='Pooling', pool_size=3)
_SEPCONV = dict(type='SepConv')

FAMILIES = dict(
    poolformer=dict(
        token_mixer_cfg=_POOL,
        norm_cfg=dict(type='GroupNorm1', eps=1e-5),
        mlp_act_cfg=dict(type='GELU'),
        mlp_bias=True,
        stem_norm_cfg=None,
        downsample_norm_cfg=None,
        layer_scale_init_value=1e-5,
        res_scale_init_value=None,
    ),
    poolformerv2=dict(_BASELINE, token_mixer_cfg=_POOL, norm_cfg=_GLOBAL_GN),
    identityformer=dict(
        _BASELINE,
        token_mixer_cfg=dict(type='IdentityMixer'),
        norm_cfg=_GLOBAL_GN,
    ),
    randformer=dict(
        _BASELINE,
        token_mixer_cfg=[
            dict(type='IdentityMixer'),
            dict(type='IdentityMixer'),
            dict(type='RandomMixing', num_tokens=196),
            dict(type='RandomMixing', num_tokens=49),
        ],
        norm_cfg=_GLOBAL_GN,
    ),
    convformer=dict(_BASELINE, token_mixer_cfg=_SEPCONV, norm_cfg=_CHANNEL_LN),
    caformer=dict(
        _BASELINE,
        token_mixer_cfg=[
            _SEPCONV,
            _SEPCONV,
            dict(type='Attention', head_dim=32),
            dict(type='Attention', head_dim=32),
        ],
        norm_cfg=_CHANNEL_LN,
        mlp_channels_last=[False, False, True, True],
    ),
)

FAMILY_SIZES = dict(
    poolformer=dict(
        POOLFORMER_SIZES,
        # v1 uses a smaller layer-scale init for its deeper models.
        **{
            k: dict(v, layer_scale_init_value=1e-6)
            for k, v in POOLFORMER_SIZES.items()
            if k in ('s36', 'm36', 'm48')
        },
    ),
    poolformerv2=POOLFORMER_SIZES,
    identityformer=POOLFORMER_SIZES,
    randformer=POOLFORMER_SIZES,
    convformer=CONVFORMER_SIZES,
    caformer=CONVFORMER_SIZES,
)

METAFORMER_ARCHS = {
    family: {
        size: dict(FAMILIES[family], **spec) for size, spec in sizes.items()
    }
    for family, sizes in FAMILY_SIZES.items()
}

# ConvMixer: dim, depth, depthwise kernel k, patch size p, activation.
CONVMIXER_ARCH_KEYS = ('dim', 'depth', 'kernel_size', 'patch_size', 'act_cfg')
CONVMIXER_ARCHS = {
    '768/32': dict(
        dim=768,
        depth=32,
        kernel_size=7,
        patch_size=7,
        act_cfg=dict(type='ReLU'),
    ),
    '1024/20': dict(
        dim=1024,
        depth=20,
        kernel_size=9,
        patch_size=14,
        act_cfg=dict(type='GELU'),
    ),
    '1536/20': dict(
        dim=1536,
        depth=20,
        kernel_size=9,
        patch_size=7,
        act_cfg=dict(type='GELU'),
    ),
}

# Official ImageNet weights (the authors' READMEs: sail-sg/poolformer,
# sail-sg/metaformer, and ConvMixer's releases).
_V1_URL = (
    'https://github.com/sail-sg/poolformer/releases/download/v1.0/'
    'poolformer_{size}.pth.tar'
)
_BASELINE_URL = (
    'https://huggingface.co/sail/dl/resolve/main/{family}/'
    '{family}_{size}{suffix}.pth'
)
_CONVMIXER_URL = (
    'https://github.com/tmp-iclr/convmixer/releases/download/'
    'timm-v1.0/convmixer_{name}.pth.tar'
)

# Published weight variants besides the default (ImageNet-1K at 224x224),
# as the file-name suffix, per family. All are in the metaformer_baselines
# key layout, so the same converter loads them; only the classifier head
# differs (21841 classes for ``in21k``), and a backbone drops it.
#   384           ImageNet-1K, fine-tuned at 384x384
#   in21ft1k      ImageNet-21K pre-training, fine-tuned on ImageNet-1K (224)
#   384_in21ft1k  the same, fine-tuned at 384x384
#   in21k         ImageNet-21K only (21841-class head)
# The 21K-pre-trained weights are the strongest published starting points
# for dense tasks (top-1 after fine-tuning, S18: ConvFormer 83.7 vs 83.0,
# CAFormer 84.1 vs 83.6). IdentityFormer, RandFormer and PoolFormerV2 were
# published at 224 on ImageNet-1K only; PoolFormer v1 and ConvMixer too.
WEIGHT_VARIANTS = dict(
    convformer=('384', 'in21ft1k', '384_in21ft1k', 'in21k'),
    caformer=('384', 'in21ft1k', '384_in21ft1k', 'in21k'),
)


def pretrained_url(family, arch, variant=None):
    """The URL of an official ImageNet checkpoint of ``family``/``arch``.

    Args:
        family (str): ``poolformer``, ``poolformerv2``, ``identityformer``,
            ``randformer``, ``convformer``, ``caformer`` or ``convmixer``.
        arch (str): a size of that family (``s18``, ``768/32``, ...).
        variant (str | None): ``None`` for the ImageNet-1K weights at 224,
            or one of ``WEIGHT_VARIANTS[family]``, e.g. ``'in21ft1k'`` ->
            ``.../convformer/convformer_s18_in21ft1k.pth``.

    Raises:
        ValueError: unknown family, arch or variant (listing valid ones).
    """
    sizes = (
        CONVMIXER_ARCHS
        if family == 'convmixer'
        else METAFORMER_ARCHS.get(family)
    )
    if sizes is None:
        valid = list(METAFORMER_ARCHS) + ['convmixer']
        raise ValueError(
            f"Unknown family '{family}'; valid: {', '.join(valid)}"
        )
    if arch not in sizes:
        raise ValueError(
            f"Unknown arch '{arch}' for {family}; valid: {', '.join(sizes)}"
        )
    if variant is not None and variant not in WEIGHT_VARIANTS.get(family, ()):
        valid = WEIGHT_VARIANTS.get(family)
        raise ValueError(
            f"No '{variant}' weights are published for {family}; valid "
            f'variants: {", ".join(("None",) + valid) if valid else "None"}'
        )
    if family == 'poolformer':
        return _V1_URL.format(size=arch)
    if family == 'convmixer':
        return _CONVMIXER_URL.format(
            name={
                '768/32': '768_32_ks7_p7_relu',
                '1024/20': '1024_20_ks9_p14',
                '1536/20': '1536_20_ks9_p7',
            }[arch]
        )
    return _BASELINE_URL.format(
        family=family, size=arch, suffix=f'_{variant}' if variant else ''
    )


# The same weights as Hugging Face Hub ids (``hf-hub:``, see
# mmmetaformer/checkpoint/hub.py): timm's repos (``model.safetensors`` in
# timm's key layout, converted by timm from the authors' files), named as in
# timm's pretrained cfgs (``timm.models.metaformer``/``convmixer``
# ``default_cfgs``, ``hf_hub_id='timm/'``), keyed by our variant names.
# IdentityFormer and RandFormer are not in timm: their id is the authors'
# Hub file itself.
_TIMM_TAGS = {
    None: 'sail_in1k',
    '384': 'sail_in1k_384',
    'in21ft1k': 'sail_in22k_ft_in1k',
    '384_in21ft1k': 'sail_in22k_ft_in1k_384',
    'in21k': 'sail_in22k',
}
_TIMM_CONVMIXER = {
    '768/32': 'convmixer_768_32.in1k',
    '1024/20': 'convmixer_1024_20_ks9_p14.in1k',
    '1536/20': 'convmixer_1536_20.in1k',
}
_TIMM_FAMILIES = ('poolformer', 'poolformerv2', 'convformer', 'caformer')


def pretrained_hub_id(family, arch, variant=None):
    """The ``hf-hub:`` id of the weights ``pretrained_url(family, arch,
    variant)`` names (same arguments, same errors).

    timm's repo where timm publishes them
    (``'hf-hub:timm/caformer_s18.sail_in22k_ft_in1k'`` for
    ``('caformer', 's18', 'in21ft1k')``), else the authors' Hub file
    (``'hf-hub:sail/dl/identityformer/identityformer_s12.pth'``).
    """
    url = pretrained_url(family, arch, variant)
    if family == 'convmixer':
        return f'hf-hub:timm/{_TIMM_CONVMIXER[arch]}'
    if family in _TIMM_FAMILIES:
        return f'hf-hub:timm/{family}_{arch}.{_TIMM_TAGS[variant]}'
    return 'hf-hub:sail/dl/' + url.split('/resolve/main/', 1)[1]


def published_weights():
    """``{url: hub_id}`` of every official ImageNet checkpoint."""
    table = {}
    for family in list(METAFORMER_ARCHS) + ['convmixer']:
        sizes = (
            CONVMIXER_ARCHS
            if family == 'convmixer'
            else METAFORMER_ARCHS[family]
        )
        for arch in sizes:
            for variant in (None,) + WEIGHT_VARIANTS.get(family, ()):
                table[pretrained_url(family, arch, variant)] = (
                    pretrained_hub_id(family, arch, variant)
                )
    return table
