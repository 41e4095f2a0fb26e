"""Export a whole detector or segmentor to one ONNX file, checked.

    python tools/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx
        [--shape H W] [--check-shape H W] [--no-verify]
        [--cfg-options ...]

The file (opset 17, standard ops only: onnxruntime, TensorRT >= 10 and
OpenVINO read it without plugins; batch, height and width dynamic) takes
``image``: float32 ``N x 3 x H x W``, 0-255, the image as the config's test
pipeline leaves it after resizing, in the channel order it was loaded in;
normalisation, channel swap and padding happen inside. Outputs:

* detectors: ``boxes`` (N x K x 4, xyxy in input pixels), ``scores``
  (N x K, 0 in empty slots), ``labels`` (N x K, int64), with the config's
  test-time NMS; instance models also ``masks`` (N x K x H x W float
  probabilities; mmdet binarises at the config's ``mask_thr_binary``, kept
  in the file's metadata);
* segmentors: ``logits`` (N x C x H x W); sliding-window configs export
  whole-image inference.

``--verify`` (default) runs the file in onnxruntime at the export size and
at ``--check-shape`` (default: about 3/4 of it, its stage-4 map not
divisible by 3 or 6) against the PyTorch model on the same tensor and
prints the differences. A mismatch exits with status 1 and writes no file;
a head the exporter cannot write exits with status 2, one line naming it.
"""

import argparse
import os.path as osp
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import (
    LaunchError,
    load_config,
    run_tool,
)

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a whole detector or segmentor to ONNX and check '
        'it in onnxruntime against PyTorch'
    )
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="export size (default: from the test pipeline's Resize)",
    )
    parser.add_argument(
        '--check-shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='second verification size',
    )
    parser.add_argument(
        '--verify',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='check in onnxruntime against PyTorch at two sizes (default: on)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, as in train.py',
    )
    return parser.parse_args(argv)


def default_shape(cfg):
    """``(H, W)`` an image of 4:3 gets from the test pipeline's Resize."""
    for step in cfg.test_dataloader.dataset.get('pipeline', []):
        if step.get('type', '').split('.')[-1] == 'Resize' and step.get(
            'scale'
        ):
            scale = step['scale']
            scale = (scale, scale) if isinstance(scale, int) else scale
            if not step.get('keep_ratio', False):
                return int(scale[1]), int(scale[0])
            height = min(scale)
            width = min(max(scale), round(height * 4 / 3 / 32) * 32)
            return int(height), int(width)
    raise LaunchError(
        "the config's test pipeline has no Resize with a "
        'scale; pass --shape H W'
    )


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')
    if not args.out.endswith('.onnx'):
        raise LaunchError(
            f'--out {args.out}: give a file name ending in .onnx'
        )
    shape = tuple(args.shape) if args.shape else default_shape(cfg)
    for name, size in (
        ('--shape', shape),
        ('--check-shape', args.check_shape),
    ):
        if size is not None and min(size) < 32:
            raise LaunchError(
                f'{name} {size[0]} {size[1]}: both sides '
                'must be at least 32 pixels'
            )
    from mmmetaformer.export import UnsupportedModel
    from mmmetaformer.export.exporter import VerificationError, export_model

    try:
        export_model(
            cfg,
            scope,
            args.checkpoint,
            args.out,
            shape,
            verify=args.verify,
            check_shape=args.check_shape,
        )
    except UnsupportedModel as exc:
        raise LaunchError(f'{exc}; no file written') from None
    except VerificationError as exc:
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    run_tool(main)
