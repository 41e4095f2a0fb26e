"""Convert published MetaFormer weights to mmmetaformer's own format.

Usage: python tools/convert_checkpoint.py SRC DST [--format auto|...]

SRC may be a path or URL in any supported format (see
``mmmetaformer/checkpoint/formats.py``); DST gets
``{'meta': {...}, 'state_dict': backbone tensors}`` (``.safetensors`` if DST
ends with it). Classifier tensors (``head.*``, final ``norm.*``) and other
model parts are dropped and listed. Conversion uses the same functions as
``init_cfg=dict(type='Pretrained', ...)``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmmetaformer.checkpoint import (FORMATS, NATIVE_META_KEY,  # noqa: E402
                                     read_checkpoint, to_native)
from mmmetaformer.checkpoint.formats import CLASSIFIER_PREFIXES  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='source checkpoint (path or URL)')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--format', default='auto',
                        choices=('auto', ) + FORMATS,
                        help='source format (default: detect)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch
    try:
        raw = read_checkpoint(args.src)
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
