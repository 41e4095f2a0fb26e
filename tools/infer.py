"""Predict with a trained detector or segmentor on images; draw and save.

    python tools/infer.py INPUT CONFIG CHECKPOINT [--out-dir DIR]
        [--out FILE] [--score-thr 0.3] [--device cpu] [--cfg-options ...]

INPUT is an image file, a folder (its images, sorted) or a text file with
one image path per line. Predictions come from mmdet's ``DetInferencer``
(``default_scope='mmdet'`` configs) or mmseg's ``MMSegInferencer``
(``'mmseg'``), which write what they write for mmdet's and mmseg's own
demos: the drawn pictures in ``DIR/vis/`` and the predictions in
``DIR/preds/`` (detection: one JSON per image with ``labels``, ``scores``
and ``bboxes``, and masks for instance segmentation; segmentation: one
label PNG per image, ``DIR/pred/<name>.png``). ``--out FILE`` also writes the
picture of a single image to FILE. Outputs are named by the image's file
name, so two inputs of the same name (extension aside) are refused rather
than one overwriting the other; every output appears whole or not at all
(written aside, then renamed into place), and none may replace an input.

Detection thresholds: the model drops boxes scoring under its own
``test_cfg.score_thr`` (RetinaNet: 0.05) before anything is drawn or
saved. ``--score-thr`` is the threshold for drawing; the JSON keeps every
box the model returned, with its score. Below the model's own threshold,
the model's is lowered to it so that the low-scoring boxes exist, and the
tool says so.

CHECKPOINT may be a ``.onnx`` file from ``tools/export_onnx.py``: the
same pictures and predictions, computed in onnxruntime (the config still
gives the test pipeline; the classes come with the file).

A checkpoint is required: a detection or segmentation head without trained
weights predicts noise. It is read without running pickled code and must
hold exactly the model's tensors. An image that cannot be decoded stops
the tool with one line naming it (exit status 2), before any prediction.
"""

import argparse
import os
import os.path as osp
import shutil
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import (
    LaunchError,
    load_config,
    name_image_loader_for_inferencers,
    run_tool,
)

from mmengine.config import DictAction

from mmmetaformer.export.runtime import ExportedFileError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Predict with a detector or segmentor on an image, a '
        'folder or a list of images; write pictures and predictions'
    )
    parser.add_argument(
        'input',
        help='image file, folder of images, or a '
        'text file with one image path per line',
    )
    parser.add_argument('config', help='config file')
    parser.add_argument(
        'checkpoint',
        help='checkpoint file, or a Hub file '
        '(hf-hub:ORG/NAME[@REVISION][/FILE] or its URL)',
    )
    parser.add_argument(
        '--out-dir',
        default='outputs',
        help='pictures go to OUT_DIR/vis, predictions to '
        'OUT_DIR/preds (segmentation: label PNGs in OUT_DIR/pred) '
        '(default: outputs)',
    )
    parser.add_argument(
        '--out',
        help='with a single image: also write its picture to this file',
    )
    parser.add_argument(
        '--device',
        default=None,
        help='cpu or cuda:0 (default: cuda if available)',
    )
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: draw boxes scoring at least this; '
        "below the model's own threshold, lowers it "
        '(default: 0.3)',
    )
    parser.add_argument(
        '--opacity',
        type=float,
        default=0.5,
        help='segmentation: overlay opacity',
    )
    parser.add_argument(
        '--allow-nonfinite',
        action='store_true',
        help='predict with weights holding nan or inf '
        '(refused by default, naming the first such tensor)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, as in train.py',
    )
    return parser.parse_args(argv)


def list_images(source):
    """The image paths ``source`` names (a file, folder or list file)."""
    if osp.isdir(source):
        images = sorted(
            osp.join(source, f)
            for f in os.listdir(source)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not images:
            raise LaunchError(
                f'no images ({", ".join(IMAGE_EXTENSIONS)}) in folder {source}'
            )
        return images
    if not osp.isfile(source):
        raise LaunchError(f'Image file not found: {source}')
    if source.lower().endswith('.txt'):
        base = osp.dirname(source)
        try:
            with open(source, encoding='utf-8') as f:
                images = [
                    osp.join(base, line.strip())
                    for line in f
                    if line.strip() and not line.startswith('#')
                ]
        except UnicodeDecodeError as exc:
            raise LaunchError(
                f'{source} is not a text list of image paths '
                f'(not UTF-8 text: {exc.reason} at byte '
                f'{exc.start}); give an image, a folder or a '
                '.txt file with one path per line'
            ) from None
        missing = [p for p in images if not osp.isfile(p)]
        if missing:
            raise LaunchError(
                f'Image file not found: {missing[0]} (listed in {source})'
            )
        if not images:
            raise LaunchError(f'no image paths in {source}')
        return images
    return [source]


def check_images(images):
    """Decode every image once before predicting: one line for a bad one."""
    from mmmetaformer.datasets.images import ImageError, read_image

    for path in images:
        try:
            read_image(path)
        except ImageError as exc:
            raise LaunchError(str(exc)) from None


def require_exact_fit(model, checkpoint, allow_nonfinite=False):
    """Refuse a checkpoint that left weights unloaded or brought others, or
    (unless ``allow_nonfinite``) whose weights hold nan or inf.

    The inferencers load non-strictly (and only log mismatches); the file
    is read again (safely) to check.
    """
    from mmmetaformer.checkpoint import check_model_fits, read_checkpoint
    from mmmetaformer.engine.checkpoint_hooks import check_finite_weights

    loaded = read_checkpoint(checkpoint)
    check_model_fits(model, loaded, checkpoint)
    if not allow_nonfinite:
        check_finite_weights(loaded, checkpoint)


def model_score_thr(test_cfg):
    """``(config dict, key)`` holding the detector's own score threshold:
    ``test_cfg.score_thr`` (one-stage) or ``test_cfg.rcnn.score_thr``."""
    if test_cfg is None:
        return None, None
    if 'score_thr' in test_cfg:
        return test_cfg, 'score_thr'
    if 'score_thr' in test_cfg.get('rcnn', {}):
        return test_cfg.rcnn, 'score_thr'
    return None, None


def lower_score_thr(cfg, score_thr):
    """Lower the detector's own score threshold to ``score_thr`` where it
    is higher; returns the note the summary lines carry."""
    holder, key = model_score_thr(cfg.model.get('test_cfg'))
    if holder is None:
        return ''
    if score_thr < holder[key]:
        note = (
            f" (the model's own threshold {holder[key]} lowered to "
            f'{score_thr})'
        )
        holder[key] = score_thr
        return note
    return f" (the model's own threshold: {holder[key]})"


def build_inferencer(cfg, args, scope):
    """mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` of ``cfg``
    with the checkpoint's weights (an exact fit, checked), or predicting
    through an exported ``.onnx`` file in onnxruntime. Returns
    ``(inferencer, note on the score threshold)``."""
    exported = args.checkpoint.endswith('.onnx')  # tools/export_onnx.py's
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer as Inferencer
    else:
        from mmseg.apis import MMSegInferencer as Inferencer
    extra = dict(show_progress=False) if scope == 'mmdet' else {}
    if exported:
        from mmmetaformer.export.runtime import attach, open_exported

        onnx_model = open_exported(args.checkpoint, scope, args.device)
        inferencer = attach(
            Inferencer(model=cfg, weights=None, device='cpu', **extra),
            onnx_model,
        )
        return (
            inferencer,
            f" (the file's own threshold: {onnx_model.score_thr})",
        )
    note = lower_score_thr(cfg, args.score_thr) if scope == 'mmdet' else ''
    inferencer = Inferencer(
        model=cfg, weights=args.checkpoint, device=args.device, **extra
    )
    require_exact_fit(inferencer.model, args.checkpoint, args.allow_nonfinite)
    if scope == 'mmseg':
        complete_palette(inferencer.model, args.checkpoint)
    return inferencer, note


def complete_palette(model, checkpoint):
    """Give a segmentor whose checkpoint names its classes but no palette
    one colour per class (mmseg's visualizer asserts a palette as long as
    the classes, and falls back to Cityscapes' 19 colours without one):
    the fixed colours an exported ``.onnx`` file without a palette gets
    (``mmmetaformer.export.runtime.fixed_palette``). A palette of another
    length than the classes is refused."""
    from mmmetaformer.export.runtime import fixed_palette

    meta = model.dataset_meta or {}
    classes, palette = meta.get('classes'), meta.get('palette')
    if not classes:
        return
    if not palette:
        model.dataset_meta = dict(meta, palette=fixed_palette(len(classes)))
    elif len(palette) != len(classes):
        raise LaunchError(
            f'{checkpoint}: its meta has {len(classes)} classes but '
            f'{len(palette)} palette colours; give one colour per class '
            'or none'
        )


def predict_detection(inferencer, note, args, images):
    results = inferencer(
        images,
        out_dir=args.out_dir,
        no_save_pred=False,
        pred_score_thr=args.score_thr,
    )
    summaries = [
        f'{sum(s >= args.score_thr for s in pred["scores"])} detections '
        f'scoring >= {args.score_thr}{note}'
        for pred in results['predictions']
    ]
    return (
        summaries,
        osp.join(args.out_dir, 'vis'),
        osp.join(args.out_dir, 'preds'),
    )


def predict_segmentation(inferencer, note, args, images):
    """Draw each image into ``vis/`` and write its label map (class index
    per pixel; 8-bit PNG, 16-bit past 256 classes) to
    ``pred/<name>.png``. MMSegInferencer saves no label map when asked
    for the data samples, and numbers the ones it saves (``00000000_pred.png``)
    rather than naming them by the image, so they are written here."""
    from mmmetaformer_tools.result_files import write_label_map

    import numpy as np

    pred_dir = osp.join(args.out_dir, 'pred')
    os.makedirs(pred_dir, exist_ok=True)
    summaries = []
    for path in images:
        result = inferencer(
            path,
            out_dir=args.out_dir,
            opacity=args.opacity,
            with_labels=False,
            return_datasamples=True,
        )
        if isinstance(result, list):
            result = result[0]
        labels = result.pred_sem_seg.data[0].cpu().numpy()
        name = osp.splitext(osp.basename(path))[0] + '.png'
        write_label_map(osp.join(pred_dir, name), labels)
        summaries.append(f'{len(np.unique(labels))} classes predicted')
    return (
        summaries,
        osp.join(args.out_dir, 'vis'),
        osp.join(args.out_dir, 'pred'),
    )


def check_outputs(args, images):
    """Refuse, before any work, options and outputs that cannot be right:
    a threshold or opacity that is not a number in [0, 1], ``--out-dir``
    that is a file, ``--out`` that is a folder or an input image, two
    images of the same file name (their pictures and predictions are named
    by it and would overwrite each other), or an input image that an
    output would replace."""
    import math

    for name in ('score_thr', 'opacity'):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise LaunchError(
                f'--{name.replace("_", "-")} {value}: give a '
                'number from 0 to 1'
            )
    if osp.exists(args.out_dir) and not osp.isdir(args.out_dir):
        raise LaunchError(
            f'--out-dir {args.out_dir} is a file; give a '
            'folder (it is created if needed)'
        )
    inputs = {osp.realpath(p): p for p in images}
    if args.out:
        if osp.isdir(args.out):
            raise LaunchError(
                f'--out {args.out} is a folder; give a file '
                'name for the picture, e.g. '
                f'{osp.join(args.out, osp.basename(images[0]))}'
            )
        if osp.realpath(args.out) in inputs:
            raise LaunchError(
                f'--out {args.out} is the input image; give another file name'
            )
    seen = {}
    for path in images:
        name = osp.splitext(osp.basename(path))[0]
        if name in seen:
            raise LaunchError(
                f'{seen[name]} and {path} have the same file name '
                '(extension aside), which names their pictures and '
                'predictions in --out-dir; rename one or run them '
                'separately'
            )
        seen[name] = path
        for sub in OUTPUT_FOLDERS:
            output = osp.realpath(
                osp.join(args.out_dir, sub, osp.basename(path))
            )
            if output in inputs:
                raise LaunchError(
                    f'--out-dir {args.out_dir} would replace '
                    f'the input image {inputs[output]}; give '
                    'another --out-dir'
                )


# Where the inferencers write under --out-dir: pictures, and predictions
# (mmdet: preds/<name>.json; mmseg: pred/<name>.png).
OUTPUT_FOLDERS = ('vis', 'preds', 'pred')


def predict_atomically(predict, cfg, args, images, scope):
    """Run ``predict`` with the inferencers writing into a hidden staging
    folder inside ``--out-dir``, then move each file into place with
    ``atomic_output``: a kill or a full disk never leaves a half-written
    picture or JSON under its final name. Returns what ``predict`` returns,
    its folders under ``--out-dir``."""
    import tempfile

    from mmmetaformer.engine.checkpoint_hooks import (
        OutputWriteError,
        atomic_output,
    )

    os.makedirs(args.out_dir, exist_ok=True)
    out_dir = args.out_dir
    args.out_dir = tempfile.mkdtemp(prefix='.partial-', dir=out_dir)
    try:
        try:
            inferencer, note = build_inferencer(cfg, args, scope)
            summaries, vis_dir, pred_dir = predict(
                inferencer, note, args, images
            )
        except OSError as exc:  # a picture or JSON the inferencer wrote
            raise OutputWriteError(
                f'Could not write the predictions into {out_dir}: '
                f'{exc.strerror or exc} ({type(exc).__name__}); nothing '
                'partial was left there'
            ) from exc
        for folder, _, files in os.walk(args.out_dir):
            final_folder = osp.join(out_dir, osp.relpath(folder, args.out_dir))
            os.makedirs(final_folder, exist_ok=True)
            for name in files:
                with atomic_output(osp.join(final_folder, name)) as partial:
                    os.replace(osp.join(folder, name), partial)
    finally:
        shutil.rmtree(args.out_dir, ignore_errors=True)
        staging, args.out_dir = args.out_dir, out_dir
    return (
        summaries,
        osp.join(out_dir, osp.relpath(vis_dir, staging)),
        osp.join(out_dir, osp.relpath(pred_dir, staging)),
    )


def main(argv=None):
    args = parse_args(argv)
    images = list_images(args.input)
    check_outputs(args, images)
    cfg, scope = load_config(args.config, args.cfg_options)
    from mmmetaformer.checkpoint.hub import fetch_hub_file, is_hub_checkpoint

    if is_hub_checkpoint(args.checkpoint):  # hf-hub: id or Hub URL
        args.checkpoint = fetch_hub_file(args.checkpoint)
    elif not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')
    if args.out and len(images) != 1:
        raise LaunchError(
            f'--out takes the picture of one image; '
            f'{args.input} names {len(images)}'
        )
    check_images(images)
    import torch
    from mmengine.registry import init_default_scope

    import mmmetaformer  # noqa: F401  (registers our modules)

    if args.device is None:
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    # The checkpoint supplies every weight; skip the ImageNet download.
    cfg.model.backbone.init_cfg = None
    name_image_loader_for_inferencers(cfg)  # images were checked above
    init_default_scope(scope)
    predict = predict_detection if scope == 'mmdet' else predict_segmentation
    try:
        summaries, vis_dir, pred_dir = predict_atomically(
            predict, cfg, args, images, scope
        )
    except ExportedFileError as exc:
        raise LaunchError(str(exc)) from None
    if args.out:
        from mmmetaformer.engine.checkpoint_hooks import atomic_output

        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        with atomic_output(args.out) as partial:
            shutil.copyfile(
                osp.join(vis_dir, osp.basename(images[0])), partial
            )
    for path, summary in zip(images[:-1], summaries):
        print(f'{path}: {summary}')
    print(
        f'{images[-1]}: {summaries[-1]}; wrote {len(images)} pictures to '
        f'{vis_dir} and predictions to {pred_dir}'
        + (f', and {args.out}' if args.out else '')
    )


if __name__ == '__main__':
    run_tool(main)
