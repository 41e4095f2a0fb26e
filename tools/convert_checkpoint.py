"""Convert published MetaFormer weights to mmmetaformer's own format.

Usage: python tools/convert_checkpoint.py SRC DST [--format auto|...]
           [--backbone-only] [--check-config CONFIG]

SRC may be a path or URL in any supported format (see
``mmmetaformer/checkpoint/formats.py``); DST gets
``{'meta': {...}, 'state_dict': backbone tensors}`` (``.safetensors`` if DST
ends with it). Classifier tensors (``head.*``, final ``norm.*``) and other
model parts are dropped and listed. Conversion uses the same functions as
``init_cfg=dict(type='Pretrained', ...)``.

A whole trained PoolFormer RetinaNet / Mask R-CNN / Semantic FPN (the
authors' mmdet 2.x / mmseg 0.x releases, mmseg's ``fpn_poolformer_*`` zoo;
``poolformer_dense`` in ``mmmetaformer/checkpoint/formats.py``) is detected
and converted whole, heads included: DST then loads into our matching
config (``configs/{retinanet,mask_rcnn}_poolformer_*_coco.py``,
``configs/semantic_fpn_poolformer_*_ade20k.py``) with ``load_from``,
``tools/test.py`` or mmdet's/mmseg's own tools. ``--check-config`` builds
that config's model and loads DST into it strictly. ``--backbone-only``
takes just the backbone of such a file instead.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmmetaformer.checkpoint import (FORMATS, NATIVE_META_KEY,  # noqa: E402
                                     read_checkpoint, to_native)
from mmmetaformer.checkpoint.formats import (  # noqa: E402
    CLASSIFIER_PREFIXES, DENSE_FORMATS, dense_to_native)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='source checkpoint (path or URL)')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--format', default='auto',
                        choices=('auto', ) + FORMATS + DENSE_FORMATS,
                        help='source format (default: detect)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='from a whole trained model, keep only the '
                        'backbone (for init_cfg)')
    parser.add_argument('--check-config', metavar='CONFIG',
                        help='after a whole-model conversion, build this '
                        "config's model and load DST into it strictly")
    return parser.parse_args(argv)


def check_config(config, state_dict):
    """Build ``config``'s model and load ``state_dict`` into it strictly.

    Raises:
        ValueError: listing missing, unexpected and mis-shaped keys.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)  # its custom_imports register our models
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
        for k in own if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    for what, keys in (('missing in the checkpoint', missing),
                       ('not in the model', unexpected),
                       ('shape mismatch (checkpoint vs model)', mismatched)):
        if keys:
            problems.append(f"{what} ({len(keys)}): {', '.join(keys[:20])}"
                            f"{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise ValueError(f'The converted checkpoint does not fit {config}:'
                         '\n  ' + '\n  '.join(problems))
    model.load_state_dict(state_dict, strict=True)
    return len(own)


def write_dense(args, dense):
    """Write a converted whole model; optionally check it against a config."""
    import torch
    state_dict = {k: v.contiguous() for k, v in dense['state_dict'].items()}
    meta = {NATIVE_META_KEY: 1, 'source_format': DENSE_FORMATS[0],
            'model': dense['kind'], 'source': osp.basename(str(args.src))}
    if dense['dataset_meta']:
        meta['dataset_meta'] = dense['dataset_meta']
    if args.dst.endswith('.safetensors'):
        print('error: a whole trained model is written as .pth (mmengine '
              "reads load_from with torch.load); DST ends with "
              '.safetensors', file=sys.stderr)
        return 2
    torch.save({'meta': meta, 'state_dict': state_dict}, args.dst)
    print(f"{args.src}: whole {dense['kind']} (format {DENSE_FORMATS[0]}), "
          f'wrote {len(state_dict)} tensors to {args.dst}')
    if dense['dropped']:
        print(f"dropped {len(dense['dropped'])} tensors the model does not "
              f"use: {', '.join(dense['dropped'])}")
    if args.check_config:
        try:
            count = check_config(args.check_config, state_dict)
        except ValueError as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 1
        print(f'{args.check_config}: all {count} model tensors load '
              f'strictly from {args.dst}')
    return 0


def main(argv=None):
    args = parse_args(argv)
    import torch
    try:
        raw = read_checkpoint(args.src)
        dense = None
        whole = args.format in ('auto', ) + DENSE_FORMATS
        if whole and not args.backbone_only:
            dense = dense_to_native(raw)
            if dense is None and args.format in DENSE_FORMATS:
                raise ValueError(
                    f'{args.src} is not a whole PoolFormer RetinaNet / Mask '
                    f'R-CNN / Semantic FPN checkpoint (format {args.format})')
        if dense is not None:
            return write_dense(args, dense)
        if args.check_config:
            raise ValueError('--check-config applies to whole trained '
                             'models; this is a backbone conversion')
        state_dict, fmt, others = to_native(raw, args.format)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    classifier = sorted(k for k in state_dict
                        if k.startswith(CLASSIFIER_PREFIXES))
    backbone = {
        k: v.contiguous()
        for k, v in state_dict.items() if k not in set(classifier)
    }
    meta = {NATIVE_META_KEY: 1, 'source_format': fmt,
            'source': osp.basename(str(args.src))}
    if args.dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(backbone, args.dst,
                  metadata={k: str(v) for k, v in meta.items()})
    else:
        torch.save({'meta': meta, 'state_dict': backbone}, args.dst)
    print(f'{args.src}: format {fmt}, wrote {len(backbone)} backbone '
          f'tensors to {args.dst}')
    if classifier:
        print(f'dropped {len(classifier)} classifier tensors: '
              f"{', '.join(classifier)}")
    if others:
        print(f'dropped {len(others)} tensors of other model parts '
              f"(neck/heads): {', '.join(others[:10])}"
              f"{' ...' if len(others) > 10 else ''}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
