"""Convert published MetaFormer weights to mmmetaformer's own format.

Usage: python tools/convert_checkpoint.py SRC DST [--format auto|...]
           [--arch NAME] [--backbone-only] [--check-config CONFIG]

SRC may be a path or URL in any supported format (see
``mmmetaformer/checkpoint/formats.py``); DST gets
``{'meta': {...}, 'state_dict': backbone tensors}`` (``.safetensors`` if DST
ends with it). Classifier tensors (``head.*``, final ``norm.*``) and other
model parts are dropped and listed. Conversion uses the same functions as
``init_cfg=dict(type='Pretrained', ...)``.

Nothing is written until the converted backbone tensors are checked
against a backbone, with the rules of strict loading (classifier leftovers
and the backbone's new layers aside, the key sets and shapes must agree):
the arch named by ``--arch`` (``caformer_s18``, ``convmixer_768/32``), the
backbone of ``--check-config``, or else every registered arch, reporting
the ones that fit. Converted tensors that fit none are refused with one
line naming the tensors that differ from the nearest arch.

A whole trained PoolFormer RetinaNet / Mask R-CNN / Semantic FPN (the
authors' mmdet 2.x / mmseg 0.x releases, mmseg's ``fpn_poolformer_*`` zoo;
``poolformer_dense`` in ``mmmetaformer/checkpoint/formats.py``) is detected
and converted whole, heads included: DST then loads into our matching
config (``configs/{retinanet,mask_rcnn}_poolformer_*_coco.py``,
``configs/semantic_fpn_poolformer_*_ade20k.py``) with ``load_from``,
``tools/test.py`` or mmdet's/mmseg's own tools. ``--check-config`` builds
that config's model and loads DST into it strictly. ``--backbone-only``
takes just the backbone of such a file instead.

DST is written whole or not at all (``atomic_output``: a temporary file
beside it, renamed over it once complete), so converting a file in place
(DST = SRC) is safe: SRC is read fully first and replaced only by a
complete conversion. Every error of the input (a missing, unsafe or
damaged file, tensors that fit no backbone or of the wrong dtype, DST a
folder or under a missing one, a full disk) is one line and exit status 2.
"""

import argparse
import os.path as osp
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

import mmmetaformer_tools  # noqa: F401  (quiets the frameworks' imports)

from mmmetaformer.checkpoint import (
    FORMATS,
    NATIVE_META_KEY,
    read_checkpoint,
    to_native,
)
from mmmetaformer.checkpoint.formats import (
    CLASSIFIER_PREFIXES,
    DENSE_FORMATS,
    dense_to_native,
    unwrap_checkpoint,
)
from mmmetaformer.engine.checkpoint_hooks import (
    OutputWriteError,
    check_output_file,
    write_bytes_atomically,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'src',
        help='source checkpoint: path, URL or '
        'hf-hub:ORG/NAME[@REVISION][/FILE]',
    )
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument(
        '--format',
        default='auto',
        choices=('auto',) + FORMATS + DENSE_FORMATS,
        help='source format (default: detect)',
    )
    parser.add_argument(
        '--arch',
        metavar='NAME',
        help='check the backbone against this arch only, '
        'e.g. caformer_s18 (default: every registered arch)',
    )
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='from a whole trained model, keep only the '
        'backbone (for init_cfg)',
    )
    parser.add_argument(
        '--check-config',
        metavar='CONFIG',
        help="build this config's model and load DST into "
        'it strictly (a whole-model conversion), or check '
        "the backbone against the config's backbone",
    )
    return parser.parse_args(argv)


def check_config(config, state_dict):
    """Build ``config``'s model and load ``state_dict`` into it strictly.

    Raises:
        ValueError: listing missing, unexpected and mis-shaped keys.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmmetaformer.checkpoint.loading import compare_state_dicts

    cfg = Config.fromfile(config)  # its custom_imports register our models
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    own = model.state_dict()
    problems = []
    # the loader's own comparison: keys, shapes and kinds of dtype
    missing, unexpected, mismatched = compare_state_dicts(own, state_dict)
    for what, keys in (
        ('missing in the checkpoint', missing),
        ('not in the model', unexpected),
        ('shape or type mismatch', mismatched),
    ):
        if keys:
            problems.append(
                f'{what} ({len(keys)}): {", ".join(keys[:20])}'
                f'{" ..." if len(keys) > 20 else ""}'
            )
    if problems:
        raise ValueError(
            f'the converted checkpoint does not fit {config}: '
            + '; '.join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
    return len(own)


def registered_archs():
    """``{name: (type, arch)}`` of every registered arch, as get_flops.py
    lists them (``caformer_s18``, ``convmixer_768/32``)."""
    import mmmetaformer  # noqa: F401  (registers the backbones)
    from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
    from mmmetaformer.registry import MODELS

    return {
        f'{family}_{arch}': (cls, arch)
        for family, cls in FAMILY_CLASSES.items()
        for arch in MODELS.get(cls).arch_zoo
    }


def backbone_problems(backbone_cfg, state_dict):
    """What keeps ``state_dict`` from loading strictly into the backbone
    ``backbone_cfg`` builds (on the meta device: shapes only), as
    ``mmmetaformer.checkpoint.load_pretrained`` judges it (its
    ``compare_state_dicts``: a tensor of the parameter's shape and kind of
    dtype): a list of ``'key: why'``, empty when it fits."""
    import torch

    from mmmetaformer.checkpoint.loading import compare_state_dicts
    from mmmetaformer.registry import MODELS

    with torch.device('meta'):
        model = MODELS.build(dict(backbone_cfg, init_cfg=None))
    fit = compare_state_dicts(model.state_dict(), state_dict)
    new = tuple(getattr(model, 'new_layer_prefixes', ())) or ('\0',)
    problems = [f'{k}: missing' for k in fit.missing if not k.startswith(new)]
    problems += [
        f'{k}: not in the backbone'
        for k in fit.unexpected
        if not k.startswith(new)
    ]
    problems += fit.unfit
    return problems


def check_backbone(args, state_dict):
    """The names of the archs ``state_dict`` fits (see the docstring).

    Raises:
        ValueError: one line naming the tensors that differ from the
            nearest candidate.
    """
    from mmengine.utils import ProgressBar

    archs = registered_archs()
    if args.arch:
        if args.arch not in archs:
            raise ValueError(
                f"unknown --arch '{args.arch}'; valid archs: "
                f'{", ".join(archs)}'
            )
        candidates = {args.arch: dict(zip(('type', 'arch'), archs[args.arch]))}
    elif args.check_config:
        from mmengine.config import Config

        backbone = Config.fromfile(args.check_config).model.backbone
        candidates = {args.check_config: backbone.to_dict()}
    else:
        candidates = {
            name: dict(type=cls, arch=arch)
            for name, (cls, arch) in archs.items()
        }
    found = {}
    bar = ProgressBar(len(candidates)) if len(candidates) > 1 else None
    for name, cfg in candidates.items():
        found[name] = backbone_problems(cfg, state_dict)
        if bar:
            bar.update()
    if bar:
        sys.stdout.write('\n')
    fits = [name for name, problems in found.items() if not problems]
    if fits:
        return fits
    name, problems = min(found.items(), key=lambda kv: len(kv[1]))
    shown = '; '.join(problems[:6])
    more = f'; ... ({len(problems) - 6} more)' if len(problems) > 6 else ''
    raise ValueError(
        f'the converted tensors fit no backbone; against '
        f'{name}, {len(problems)} differ: {shown}{more}'
    )


def save_pth(obj, dst):
    """``torch.save`` into memory, then one atomic write: a failed write is
    a Python ``OSError`` (not torch's writer's ``RuntimeError``) and leaves
    nothing partial."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomically(dst, buffer.getvalue())


def contiguous(state_dict):
    """Tensors made contiguous (``save_file`` needs it); any other entry is
    left for the fit check to name."""
    import torch

    return {
        k: v.contiguous() if isinstance(v, torch.Tensor) else v
        for k, v in state_dict.items()
    }


def write_dense(args, dense):
    """Write a converted whole model; optionally check it against a config."""
    state_dict = contiguous(dense['state_dict'])
    meta = {
        NATIVE_META_KEY: 1,
        'source_format': DENSE_FORMATS[0],
        'model': dense['kind'],
        'source': osp.basename(str(args.src)),
    }
    if dense['dataset_meta']:
        meta['dataset_meta'] = dense['dataset_meta']
    if args.dst.endswith('.safetensors'):
        raise ValueError(
            'a whole trained model is written as .pth (mmengine '
            'reads load_from with torch.load); DST ends with '
            '.safetensors'
        )
    if args.check_config:  # before anything is written
        try:
            count = check_config(args.check_config, state_dict)
        except ValueError as exc:
            print(f'error: {exc}; nothing written', file=sys.stderr)
            return 1
    save_pth({'meta': meta, 'state_dict': state_dict}, args.dst)
    print(
        f'{args.src}: whole {dense["kind"]} (format {DENSE_FORMATS[0]}), '
        f'wrote {len(state_dict)} tensors to {args.dst}'
    )
    if dense['dropped']:
        print(
            f'dropped {len(dense["dropped"])} tensors the model does not '
            f'use: {", ".join(dense["dropped"])}'
        )
    if args.check_config:
        print(
            f'{args.check_config}: all {count} model tensors load '
            f'strictly from {args.dst}'
        )
    return 0


def main(argv=None):
    """Exit status: 0 written, 2 an error of the input (one line), 1 the
    converted whole model does not fit ``--check-config``."""
    args = parse_args(argv)
    try:
        return convert(args)
    except (
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        UnicodeDecodeError,
        RuntimeError,
        ValueError,
        TypeError,
        OutputWriteError,
    ) as exc:
        # RuntimeError covers CheckpointError (unsafe, damaged, unfit)
        lines = [line.strip() for line in str(exc).splitlines()]
        print(
            f'error: {"; ".join(filter(None, lines)) or repr(exc)}',
            file=sys.stderr,
        )
        return 2


def convert(args):
    import torch

    check_output_file(args.dst, 'DST')
    raw = read_checkpoint(args.src)
    # a weight that is a number or a string: named here, before the
    # converters reshape tensors
    not_tensors = [
        f'{k} (not a tensor: {type(v).__name__})'
        for k, v in unwrap_checkpoint(raw)[0].items()
        if not isinstance(v, torch.Tensor)
    ]
    if not_tensors:
        raise ValueError(
            f'{args.src}: {len(not_tensors)} entries of its '
            f'state dict cannot be weights: '
            f'{", ".join(not_tensors[:5])}'
        )
    dense = None
    whole = args.format in ('auto',) + DENSE_FORMATS
    if whole and not args.backbone_only:
        dense = dense_to_native(raw)
        if dense is None and args.format in DENSE_FORMATS:
            raise ValueError(
                f'{args.src} is not a whole PoolFormer RetinaNet / Mask '
                f'R-CNN / Semantic FPN checkpoint (format {args.format})'
            )
    if dense is not None:
        return write_dense(args, dense)
    state_dict, fmt, others = to_native(raw, args.format)
    classifier = sorted(
        k for k in state_dict if k.startswith(CLASSIFIER_PREFIXES)
    )
    backbone = contiguous(
        {k: v for k, v in state_dict.items() if k not in set(classifier)}
    )
    fits = check_backbone(args, backbone)
    meta = {
        NATIVE_META_KEY: 1,
        'source_format': fmt,
        'source': osp.basename(str(args.src)),
    }
    if args.dst.endswith('.safetensors'):
        from safetensors.torch import save

        write_bytes_atomically(
            args.dst,
            save(backbone, metadata={k: str(v) for k, v in meta.items()}),
        )
    else:
        save_pth({'meta': meta, 'state_dict': backbone}, args.dst)
    print(
        f'{args.src}: format {fmt}, wrote {len(backbone)} backbone '
        f'tensors to {args.dst}; they fit {", ".join(fits)}'
    )
    if classifier:
        print(
            f'dropped {len(classifier)} classifier tensors: '
            f'{", ".join(classifier)}'
        )
    if others:
        print(
            f'dropped {len(others)} tensors of other model parts '
            f'(neck/heads): {", ".join(others[:10])}'
            f'{" ..." if len(others) > 10 else ""}'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
