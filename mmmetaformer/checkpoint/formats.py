"""Pure state-dict converters, one per published weight format.

Every converter maps a flat ``{key: tensor}`` dict to the native layout of
``mmmetaformer`` (which is timm's ``timm.models.metaformer`` /
``timm.models.convmixer`` layout with NCHW 1x1-conv MLPs) and returns a new
dict. Keys a converter does not know are passed through unchanged, so the
loader can report them instead of hiding them. ``init_weights`` and
``tools/convert_checkpoint.py`` both go through ``to_native``.

Formats:
    poolformer_v1          the authors' PoolFormer ``.pth.tar``
                           (``patch_embed.proj``, ``network.{0,2,4,6}.{j}``,
                           ``network.{1,3,5}.proj``, ``layer_scale_{1,2}``)
    metaformer_baselines   the authors' baselines ``.pth``
                           (``downsample_layers.{i}``, ``stages.{i}.{j}``,
                           channels-last ``nn.Linear`` weights)
    timm                   timm state dicts, ``.pth`` or ``.safetensors``
                           (``stem``, ``stages.{i}.downsample``,
                           ``stages.{i}.blocks.{j}``; ConvMixer ``stem.0``,
                           ``blocks.{i}``)
    mmpretrain             mmpretrain ``PoolFormer`` checkpoints
                           (``backbone.`` + v1 keys, output norms
                           ``norm{0,2,4,6}``)
    mmmetaformer           our own: backbone-only files written by
                           ``tools/convert_checkpoint.py`` and full
                           mmdet/mmseg checkpoints (``backbone.`` prefix)

Whole trained models (``dense_to_native``, ``DENSE_FORMATS``):
    poolformer_dense       published RetinaNet / Mask R-CNN / Semantic FPN
                           with a PoolFormer v1 backbone (the authors' mmdet
                           2.x / mmseg 0.x files, mmseg's model zoo) -> the
                           keys of our matching config, heads included
"""

import re

FORMATS = (
    'poolformer_v1',
    'metaformer_baselines',
    'timm',
    'mmpretrain',
    'mmmetaformer',
)

# A tag in the ``meta`` of files we write, so they are recognised as ours.
NATIVE_META_KEY = 'mmmetaformer_format'

# Classifier parts: expected leftovers when a backbone loads ImageNet weights.
CLASSIFIER_PREFIXES = ('head.', 'norm.')

# Channels-last Linear weights that are 1x1 convs in the NCHW model.
_LINEAR_AS_CONV = re.compile(
    r'\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$'
)


def _rename(state_dict, rules):
    """Apply the first matching ``(regex, replacement)`` rule to every key."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new_key, count = re.subn(pattern, repl, key)
            if count:
                key = new_key
                break
        out[key] = value
    return out


def _linear_to_conv(state_dict):
    """Reshape ``[out, in]`` MLP/pointwise weights to ``[out, in, 1, 1]``."""
    return {
        k: v[:, :, None, None]
        if v.dim() == 2 and _LINEAR_AS_CONV.search(k)
        else v
        for k, v in state_dict.items()
    }


def convert_poolformer_v1(state_dict):
    """The authors' PoolFormer v1 keys -> native keys."""
    return _rename(
        state_dict,
        [
            (r'^patch_embed\.proj\.', 'stem.conv.'),
            (
                r'^network\.([0246])\.(\d+)\.layer_scale_([12])$',
                lambda m: (
                    f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.'
                    f'layer_scale{m.group(3)}.scale'
                ),
            ),
            (
                r'^network\.([0246])\.(\d+)\.',
                lambda m: (
                    f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.'
                ),
            ),
            (
                r'^network\.([135])\.proj\.',
                lambda m: (
                    f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.'
                ),
            ),
        ],
    )


def convert_mmpretrain(state_dict):
    """mmpretrain ``PoolFormer`` (``backbone.`` already stripped) -> native.

    mmpretrain keeps the v1 keys and names its output norms after the
    positions in its alternating block/downsample list: ``norm{0,2,4,6}``.
    """
    state_dict = _rename(
        state_dict,
        [
            (
                r'^norm([0246])\.',
                lambda m: f'out_norms.{int(m.group(1)) // 2}.',
            ),
        ],
    )
    return convert_poolformer_v1(state_dict)


def convert_metaformer_baselines(state_dict):
    """The authors' baselines (channels-last) -> native (NCHW) keys."""
    state_dict = _rename(
        state_dict,
        [
            (r'^downsample_layers\.0\.conv\.', 'stem.conv.'),
            (r'^downsample_layers\.0\.post_norm\.', 'stem.norm.'),
            (
                r'^downsample_layers\.([123])\.pre_norm\.',
                r'stages.\1.downsample.norm.',
            ),
            (
                r'^downsample_layers\.([123])\.conv\.',
                r'stages.\1.downsample.conv.',
            ),
            (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
        ],
    )
    return _linear_to_conv(state_dict)


def convert_timm(state_dict):
    """timm -> native: same names; channels-last Linear MLPs become 1x1."""
    return _linear_to_conv(state_dict)


def convert_mmmetaformer(state_dict):
    """Our own format is native already."""
    return dict(state_dict)


CONVERTERS = dict(
    poolformer_v1=convert_poolformer_v1,
    metaformer_baselines=convert_metaformer_baselines,
    timm=convert_timm,
    mmpretrain=convert_mmpretrain,
    mmmetaformer=convert_mmmetaformer,
)


def unwrap_checkpoint(checkpoint):
    """Return ``(state_dict, meta)`` from a loaded checkpoint object.

    Accepts a bare state dict or a dict wrapping one under ``state_dict``
    (mmengine, mmpretrain, timm training) or ``model`` (DeiT-style), and
    strips a DDP ``module.`` prefix.
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(
            f'A checkpoint must be a dict of tensors, got '
            f'{type(checkpoint).__name__}'
        )
    meta = (
        checkpoint.get('meta')
        if isinstance(checkpoint.get('meta'), dict)
        else {}
    )
    for wrapper_key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
            break
    return strip_ddp_prefix(checkpoint), meta


def strip_ddp_prefix(state_dict):
    """The state dict without DDP's ``module.`` key prefix (as mmengine
    strips it when loading)."""
    return {
        (k[len('module.') :] if k.startswith('module.') else k): v
        for k, v in state_dict.items()
    }


def split_prefix(state_dict, prefix):
    """Split into ``(keys under prefix with it removed, the other keys)``."""
    inside, outside = {}, {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            inside[key[len(prefix) :]] = value
        else:
            outside[key] = value
    return inside, outside


def detect_format(state_dict, meta=None, had_backbone_prefix=False):
    """Name the format of a state dict (after ``backbone.`` was stripped).

    Raises:
        ValueError: listing the known formats and some keys, if none fits.
    """
    if meta and meta.get(NATIVE_META_KEY):
        return 'mmmetaformer'
    keys = list(state_dict)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has('network.') or has('patch_embed.'):
        return 'mmpretrain' if had_backbone_prefix else 'poolformer_v1'
    if has('downsample_layers.'):
        return 'metaformer_baselines'
    if has('stem.') and (has('stages.') or has('blocks.')):
        return 'mmmetaformer' if had_backbone_prefix else 'timm'
    raise ValueError(
        f'Cannot tell the checkpoint format from its keys (first ones: '
        f'{keys[:5]}). Known formats: {", ".join(FORMATS)}; pass one '
        f'explicitly (--format / init_cfg format=...) if it is one of them.'
    )


def to_native(checkpoint, fmt='auto'):
    """Convert a loaded checkpoint object to native backbone keys.

    Args:
        checkpoint (dict): what ``torch.load`` / safetensors returned.
        fmt (str): one of ``FORMATS`` or ``'auto'`` to detect it.

    Returns:
        tuple: ``(state_dict, fmt, other_keys)`` where ``other_keys`` are keys
        outside ``backbone.`` in a full-model checkpoint (neck, heads), which
        are not for a backbone.
    """
    if fmt != 'auto' and fmt not in CONVERTERS:
        raise ValueError(
            f"Unknown checkpoint format '{fmt}'; valid formats: "
            f'auto, {", ".join(FORMATS)}'
        )
    state_dict, meta = unwrap_checkpoint(checkpoint)
    backbone, others = split_prefix(state_dict, 'backbone.')
    had_prefix = bool(backbone)
    if not had_prefix:
        backbone, others = state_dict, {}
    if fmt == 'auto':
        fmt = detect_format(backbone, meta, had_prefix)
    return CONVERTERS[fmt](backbone), fmt, sorted(others)


# --- whole trained detectors and segmentors -------------------------------
#
# The published dense PoolFormer models are whole mmdet/mmseg checkpoints:
# the authors' mmdet 2.x RetinaNet / Mask R-CNN and mmseg 0.x Semantic FPN
# (sail-sg/poolformer), and mmseg's model zoo
# (``mmseg::poolformer/fpn_poolformer_*``, backbone ``mmpretrain.PoolFormer``).
# All keep the PoolFormer v1 backbone keys under ``backbone.`` with output
# norms ``backbone.norm{0,2,4,6}``; the authors' RetinaNet was trained with
# ``FORK_LAST3=1``, which makes ``norm0`` an ``nn.Identity`` (no key).

DENSE_FORMATS = ('poolformer_dense',)

# Per model: the key prefix that identifies it, the parts it has besides the
# backbone, and the stages our matching config emits (configs/_base_/).
DENSE_MODELS = dict(
    retinanet=dict(
        marker='bbox_head.retina_cls.',
        parts=('neck.', 'bbox_head.'),
        out_indices=(1, 2, 3),
    ),
    mask_rcnn=dict(
        marker='roi_head.mask_head.',
        parts=('neck.', 'rpn_head.', 'roi_head.'),
        out_indices=(0, 1, 2, 3),
    ),
    semantic_fpn=dict(
        marker='decode_head.scale_heads.',
        parts=('neck.', 'decode_head.', 'auxiliary_head.'),
        out_indices=(0, 1, 2, 3),
    ),
)

# Top-level parts that only detectors and segmentors have.
DENSE_HEADS = {
    part.rstrip('.')
    for spec in DENSE_MODELS.values()
    for part in spec['parts']
} - {'neck'}

# The heads keep their keys: none of them was renamed from the frameworks
# the models were trained with (mmdet 2.x, mmseg 0.x) to mmdet 3.x / mmseg
# 1.x. FPN (``lateral_convs``/``fpn_convs``), RetinaHead (``cls_convs``,
# ``reg_convs``, ``retina_cls``, ``retina_reg``), RPNHead (``rpn_conv``,
# ``rpn_cls``, ``rpn_reg``), Shared2FCBBoxHead (``shared_fcs``, ``fc_cls``,
# ``fc_reg``), FCNMaskHead (``convs``, ``upsample``, ``conv_logits``) and
# FPNHead (``scale_heads``, ``conv_seg``) keep their 2.x / 0.x attribute
# names, and mmdet 3.3's and mmseg 1.2's own model zoos serve their 2.x /
# 0.x-trained checkpoints to the 3.x / 1.x configs unchanged (their
# metafiles). tests/test_dense_checkpoints.py loads each layout strictly.


def dense_model_kind(state_dict):
    """Name the published dense model a whole checkpoint holds, or ``None``.

    ``None`` unless the backbone is in the PoolFormer v1 layout
    (``backbone.patch_embed.`` / ``backbone.network.``) and a detection or
    segmentation head is there (an mmpretrain classifier, with ``head.*``,
    is not a dense model).

    Raises:
        ValueError: a PoolFormer backbone with heads of no known model, or
            of several (listing the known ones).
    """
    keys = list(state_dict)
    if not any(
        k.startswith(('backbone.patch_embed.', 'backbone.network.'))
        for k in keys
    ):
        return None
    parts = sorted({k.split('.')[0] for k in keys} - {'backbone'})
    if not set(parts) & DENSE_HEADS:
        return None
    kinds = [
        name
        for name, spec in DENSE_MODELS.items()
        if any(k.startswith(spec['marker']) for k in keys)
    ]
    if len(kinds) != 1:
        raise ValueError(
            f'A PoolFormer backbone with model parts {parts}, which match '
            f'{kinds or "none"} of the known published dense models: '
            + ', '.join(
                f'{name} (has {spec["marker"]}*)'
                for name, spec in DENSE_MODELS.items()
            )
        )
    return kinds[0]


def convert_poolformer_dense(state_dict, kind):
    """A whole published PoolFormer detector/segmentor -> our config's keys.

    Args:
        state_dict (dict): the model's flat state dict (``backbone.``,
            ``neck.`` and head keys; no ``module.`` prefix).
        kind (str): a key of ``DENSE_MODELS``.

    Returns:
        tuple: ``(state_dict, dropped)``. The backbone goes through
        ``convert_mmpretrain`` (v1 keys, ``norm{0,2,4,6}`` ->
        ``out_norms.{0..3}``) and keeps its ``backbone.`` prefix; the other
        parts keep their keys. ``dropped`` lists the
        source keys left out: RetinaNet's ``backbone.norm0.*``, the norm on
        an output its FPN (``start_level=1``) never reads, which our
        RetinaNet does not build (``out_indices=(1, 2, 3)``).

    Raises:
        ValueError: unknown ``kind``, or an output norm the model needs is
            missing (e.g. a ``FORK_LAST3`` backbone in a Mask R-CNN).
    """
    if kind not in DENSE_MODELS:
        raise ValueError(
            f"Unknown dense model '{kind}'; valid: {', '.join(DENSE_MODELS)}"
        )
    spec = DENSE_MODELS[kind]
    emitted = spec['out_indices']
    unused_norms = tuple(
        f'backbone.norm{2 * i}.' for i in range(4) if i not in emitted
    )
    dropped = sorted(
        k for k in state_dict if unused_norms and k.startswith(unused_norms)
    )
    backbone, others = split_prefix(
        {k: v for k, v in state_dict.items() if k not in dropped}, 'backbone.'
    )
    backbone = convert_mmpretrain(backbone)
    missing = [
        f'backbone.norm{2 * i}'
        for i in emitted
        if not any(k.startswith(f'out_norms.{i}.') for k in backbone)
    ]
    if missing:
        raise ValueError(
            f'The {kind} checkpoint has no output norm {missing}, which '
            f'this model reads (stages {emitted}). A backbone without '
            f'backbone.norm0 comes from a FORK_LAST3 (RetinaNet) run.'
        )
    out = {f'backbone.{k}': v for k, v in backbone.items()}
    out.update(others)
    return out, dropped


def dataset_meta_of(meta):
    """mmdet 2.x / mmseg 0.x ``meta`` (``CLASSES``, ``PALETTE``) -> the
    ``dataset_meta`` that mmdet 3 / mmseg 1 inferencers read; ``{}`` if
    neither is there."""
    out = {}
    if meta.get('dataset_meta'):
        out.update(meta['dataset_meta'])
    if meta.get('CLASSES') is not None:
        out.setdefault('classes', tuple(meta['CLASSES']))
    if meta.get('PALETTE') is not None:
        out.setdefault('palette', [list(c) for c in meta['PALETTE']])
    return out


def dense_to_native(checkpoint):
    """Convert a loaded whole-model checkpoint to our config's keys.

    Returns:
        ``None`` if ``checkpoint`` is not a published dense model (see
        ``dense_model_kind``), else a dict with ``state_dict`` (the whole
        model), ``kind``, ``dropped`` (source keys left out) and
        ``dataset_meta`` (classes/palette from the source ``meta``).
    """
    state_dict, meta = unwrap_checkpoint(checkpoint)
    kind = dense_model_kind(state_dict)
    if kind is None:
        return None
    converted, dropped = convert_poolformer_dense(state_dict, kind)
    return dict(
        state_dict=converted,
        kind=kind,
        dropped=dropped,
        dataset_meta=dataset_meta_of(meta),
    )
