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
"""
import re

FORMATS = ('poolformer_v1', 'metaformer_baselines', 'timm', 'mmpretrain',
           'mmmetaformer')

# A tag in the ``meta`` of files we write, so they are recognised as ours.
NATIVE_META_KEY = 'mmmetaformer_format'

# Classifier parts: expected leftovers when a backbone loads ImageNet weights.
CLASSIFIER_PREFIXES = ('head.', 'norm.')

# Channels-last Linear weights that are 1x1 convs in the NCHW model.
_LINEAR_AS_CONV = re.compile(r'\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$')


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
        k: v[:, :, None, None] if v.dim() == 2 and _LINEAR_AS_CONV.search(k)
        else v
        for k, v in state_dict.items()
    }


def convert_poolformer_v1(state_dict):
    """The authors' PoolFormer v1 keys -> native keys."""
    return _rename(state_dict, [
        (r'^patch_embed\.proj\.', 'stem.conv.'),
        (r'^network\.([0246])\.(\d+)\.layer_scale_([12])$',
         lambda m: f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.'
         f'layer_scale{m.group(3)}.scale'),
        (r'^network\.([0246])\.(\d+)\.',
         lambda m: f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.'),
        (r'^network\.([135])\.proj\.',
         lambda m: f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.'),
    ])


def convert_mmpretrain(state_dict):
    """mmpretrain ``PoolFormer`` (``backbone.`` already stripped) -> native.

    mmpretrain keeps the v1 keys and names its output norms after the
    positions in its alternating block/downsample list: ``norm{0,2,4,6}``.
    """
    state_dict = _rename(state_dict, [
        (r'^norm([0246])\.', lambda m: f'out_norms.{int(m.group(1)) // 2}.'),
    ])
    return convert_poolformer_v1(state_dict)


def convert_metaformer_baselines(state_dict):
    """The authors' baselines (channels-last) -> native (NCHW) keys."""
    state_dict = _rename(state_dict, [
        (r'^downsample_layers\.0\.conv\.', 'stem.conv.'),
        (r'^downsample_layers\.0\.post_norm\.', 'stem.norm.'),
        (r'^downsample_layers\.([123])\.pre_norm\.',
         r'stages.\1.downsample.norm.'),
        (r'^downsample_layers\.([123])\.conv\.',
         r'stages.\1.downsample.conv.'),
        (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
    ])
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
        raise TypeError(f'A checkpoint must be a dict of tensors, got '
                        f'{type(checkpoint).__name__}')
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'),
                                                dict) else {}
    for wrapper_key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
            break
    state_dict = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in checkpoint.items()
    }
    return state_dict, meta


def split_prefix(state_dict, prefix):
    """Split into ``(keys under prefix with it removed, the other keys)``."""
    inside, outside = {}, {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            inside[key[len(prefix):]] = value
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
        f'explicitly (--format / init_cfg format=...) if it is one of them.')


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
        raise ValueError(f"Unknown checkpoint format '{fmt}'; valid formats: "
                         f"auto, {', '.join(FORMATS)}")
    state_dict, meta = unwrap_checkpoint(checkpoint)
    backbone, others = split_prefix(state_dict, 'backbone.')
    had_prefix = bool(backbone)
    if not had_prefix:
        backbone, others = state_dict, {}
    if fmt == 'auto':
        fmt = detect_format(backbone, meta, had_prefix)
    return CONVERTERS[fmt](backbone), fmt, sorted(others)
