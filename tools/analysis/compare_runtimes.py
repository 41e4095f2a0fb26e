"""Run an exported model (``tools/export_onnx.py``) in OpenVINO and in
onnxruntime on the same images, and print how far the outputs differ.

    python tools/analysis/compare_runtimes.py FILE.onnx
        [--shape H W [--shape H W ...]] [--seed N]

It needs only numpy, onnxruntime and openvino (``pip install openvino``),
neither torch nor this package: it runs where the model is deployed. The
images are random (0-255, rounded, as a decoded image), one per shape
(default: 800x1216 and 608x832; segmentors 512x512 and 384x640).
The file's metadata says whether it is a detector or a segmentor. The
tolerances are the exporter's own (``mmmetaformer/export/exporter.py``):
detectors: each of onnxruntime's top 20 detections has one in OpenVINO
with the same label, IoU >= 0.99 and a score within 1e-3 (masks: IoU >=
0.99 at the file's threshold); segmentors: logits within 1e-4 of their
largest magnitude, labels 99.9% equal. Exit status 1 if a size differs
beyond them, 2 for bad input.
"""

import argparse
import os.path as osp
import sys

import numpy as np

TOP = 20
DEFAULT_SHAPES = dict(
    detection=[(800, 1216), (608, 832)],
    segmentation=[(512, 512), (384, 640)],
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('onnx', help='a file written by export_onnx.py')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        action='append',
        metavar=('H', 'W'),
        help='an image size (repeatable)',
    )
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def metadata(path):
    """The ``mmmetaformer.*`` entries the exporter stores in the file."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    props = session.get_modelmeta().custom_metadata_map
    return session, {
        key.split('.', 1)[1]: value
        for key, value in props.items()
        if key.startswith('mmmetaformer.')
    }


def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)

    def area(b):
        return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])

    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def compare_detections(ref, got, mask_thr):
    """``(ok, line)``: ORT's top detections found again in OpenVINO's."""
    scores = ref['scores'][0]
    order = np.argsort(-scores)[:TOP]
    order = order[scores[order] > 0]
    worst_score, worst_mask, missing = 0.0, 1.0, 0
    for i in order:
        same = got['labels'][0] == ref['labels'][0][i]
        overlap = np.where(same, iou(ref['boxes'][0][i], got['boxes'][0]), 0)
        j = int(np.argmax(overlap))
        delta = abs(float(got['scores'][0][j] - scores[i]))
        if overlap[j] < 0.99 or delta > 1e-3:
            missing += 1
            continue
        worst_score = max(worst_score, delta)
        if 'masks' in ref:
            a = ref['masks'][0][i] >= mask_thr
            b = got['masks'][0][j] >= mask_thr
            union = (a | b).sum()
            worst_mask = min(worst_mask, (a & b).sum() / union if union else 1)
    ok = missing == 0 and worst_mask >= 0.99 and len(order) > 0
    line = (
        f'{len(order) - missing}/{len(order)} of the top {TOP} detections '
        f'matched (score within {worst_score:.1e}'
        + (f', mask IoU >= {worst_mask:.4f}' if 'masks' in ref else '')
        + ')'
    )
    return ok, line


def compare_logits(ref, got):
    a, b = ref['logits'], got['logits']
    relative = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    ok = relative <= 1e-4 and agree >= 0.999
    return ok, f'logits within {relative:.1e} relative, labels {agree:.2%}'


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.onnx):
        print(f'error: no such file: {args.onnx}', file=sys.stderr)
        return 2
    try:
        import openvino as ov
    except ImportError:
        print(
            'error: openvino is not installed (pip install openvino)',
            file=sys.stderr,
        )
        return 2
    session, props = metadata(args.onnx)
    task = props.get('task')
    if task not in DEFAULT_SHAPES:
        print(
            f'error: {args.onnx} has no mmmetaformer.task entry '
            f'(detection or segmentation): export it with '
            f'tools/export_onnx.py',
            file=sys.stderr,
        )
        return 2
    mask_thr = float(props.get('mask_thr', 0.5))
    compiled = ov.Core().compile_model(args.onnx, 'CPU')
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(args.seed)
    failed = 0
    print(f'{args.onnx}: {task}, OpenVINO {ov.__version__} against ORT')
    for shape in args.shape or DEFAULT_SHAPES[task]:
        image = rng.uniform(0, 255, (1, 3, *shape)).round()
        image = image.astype(np.float32)
        ref = dict(zip(names, session.run(None, {'image': image})))
        result = compiled({'image': image})
        got = {name: result[compiled.output(name)] for name in names}
        ok, line = (
            compare_detections(ref, got, mask_thr)
            if task == 'detection'
            else compare_logits(ref, got)
        )
        failed += not ok
        print(f'  {shape[0]}x{shape[1]}: {"ok" if ok else "FAIL"}: {line}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
