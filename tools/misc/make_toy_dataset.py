"""Write a small deterministic synthetic dataset in the real COCO or ADE20K
layout, read unchanged by mmdet's CocoDataset/CocoMetric and mmseg's
ADE20KDataset/IoUMetric. The generator is ``mmmetaformer_tools.toy``
(its docstring describes the images and labels).

    python tools/misc/make_toy_dataset.py coco OUT_DIR [--num-train 64]
        [--num-val 16] [--img-size 320 | --img-size W H] [--seed 0]
        [--max-objects 4] [--overwrite]
    python tools/misc/make_toy_dataset.py ade20k OUT_DIR [--num-train 64]
        [--num-val 16] [--img-size 256 | --img-size W H] [--seed 0]
        [--overwrite]
"""

import argparse
import os.path as osp
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.toy import make_ade20k, make_coco

DEFAULT_IMG_SIZE = {'coco': 320, 'ade20k': 256}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    kinds = parser.add_subparsers(
        dest='kind', required=True, title='dataset kinds'
    )
    for kind, summary in (
        ('coco', 'COCO instances (shapes as objects)'),
        ('ade20k', 'ADE20K semantic segmentation scenes'),
    ):
        sub = kinds.add_parser(kind, help=summary, description=summary)
        sub.add_argument('out_dir', metavar='OUT_DIR', help='output folder')
        sub.add_argument(
            '--num-train',
            type=int,
            default=64,
            help='training images (default: 64)',
        )
        sub.add_argument(
            '--num-val',
            type=int,
            default=16,
            help='validation images (default: 16)',
        )
        sub.add_argument(
            '--img-size',
            type=int,
            nargs='+',
            default=[DEFAULT_IMG_SIZE[kind]],
            metavar='SIZE',
            help=f'square side, or W H (default: {DEFAULT_IMG_SIZE[kind]})',
        )
        sub.add_argument(
            '--seed', type=int, default=0, help='random seed (default: 0)'
        )
        if kind == 'coco':
            sub.add_argument(
                '--max-objects',
                type=int,
                default=4,
                help='objects per image at most (default: 4)',
            )
        sub.add_argument(
            '--overwrite',
            action='store_true',
            help='replace an existing toy dataset in OUT_DIR',
        )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(
        num_train=args.num_train,
        num_val=args.num_val,
        img_size=args.img_size,
        seed=args.seed,
        overwrite=args.overwrite,
        verbose=True,
    )
    try:
        if args.kind == 'coco':
            make_coco(args.out_dir, max_objects=args.max_objects, **options)
        else:
            make_ade20k(args.out_dir, **options)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    return 0


if __name__ == '__main__':
    sys.exit(main())
