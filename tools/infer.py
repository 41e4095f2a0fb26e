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
label PNG per image in ``DIR/pred/``). ``--out FILE`` also writes the
picture of a single image to FILE.

Detection thresholds: the model drops boxes scoring under its own
``test_cfg.score_thr`` (RetinaNet: 0.05) before anything is drawn or
saved. ``--score-thr`` is the threshold for drawing; the JSON keeps every
box the model returned, with its score. Below the model's own threshold,
the model's is lowered to it so that the low-scoring boxes exist, and the
tool says so.

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

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from mmmetaformer.utils.launch import (LaunchError, load_config,  # noqa: E402
                                       run_tool)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Predict with a detector or segmentor on an image, a '
        'folder or a list of images; write pictures and predictions')
    parser.add_argument('input', help='image file, folder of images, or a '
                        'text file with one image path per line')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', default='outputs',
                        help='pictures go to OUT_DIR/vis, predictions to '
                        'OUT_DIR/preds (default: outputs)')
    parser.add_argument('--out', help='with a single image: also write its '
                        'picture to this file')
    parser.add_argument('--device', default=None,
                        help='cpu or cuda:0 (default: cuda if available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this; '
                        "below the model's own threshold, lowers it "
                        '(default: 0.3)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: overlay opacity')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in train.py')
    return parser.parse_args(argv)


def list_images(source):
    """The image paths ``source`` names (a file, folder or list file)."""
    if osp.isdir(source):
        images = sorted(osp.join(source, f) for f in os.listdir(source)
                        if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise LaunchError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) '
                              f'in folder {source}')
        return images
    if not osp.isfile(source):
        raise LaunchError(f'Image file not found: {source}')
    if source.lower().endswith('.txt'):
        base = osp.dirname(source)
        with open(source) as f:
            images = [osp.join(base, line.strip()) for line in f
                      if line.strip() and not line.startswith('#')]
        missing = [p for p in images if not osp.isfile(p)]
        if missing:
            raise LaunchError(f'Image file not found: {missing[0]} (listed '
                              f'in {source})')
        if not images:
            raise LaunchError(f'no image paths in {source}')
        return images
    return [source]


def check_images(images):
    """Decode every image once before predicting: one line for a bad one."""
    from mmmetaformer.utils.images import ImageError, read_image
    for path in images:
        try:
            read_image(path)
        except ImageError as exc:
            raise LaunchError(str(exc)) from None


def require_exact_fit(model, checkpoint):
    """Refuse a checkpoint that left weights unloaded or brought others.

    The inferencers load non-strictly (and only log mismatches); the file
    is read again (safely) to check.
    """
    from mmmetaformer.checkpoint import check_model_fits, read_checkpoint
    check_model_fits(model, read_checkpoint(checkpoint), checkpoint)


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


def predict_detection(cfg, args, images):
    from mmdet.apis import DetInferencer
    holder, key = model_score_thr(cfg.model.get('test_cfg'))
    note = ''
    if holder is not None and args.score_thr < holder[key]:
        note = (f" (the model's own threshold {holder[key]} lowered to "
                f'{args.score_thr})')
        holder[key] = args.score_thr
    elif holder is not None:
        note = f" (the model's own threshold: {holder[key]})"
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint,
                               device=args.device, show_progress=False)
    require_exact_fit(inferencer.model, args.checkpoint)
    results = inferencer(images, out_dir=args.out_dir, no_save_pred=False,
                         pred_score_thr=args.score_thr)
    summaries = [
        f"{sum(s >= args.score_thr for s in pred['scores'])} detections "
        f'scoring >= {args.score_thr}{note}'
        for pred in results['predictions']]
    return summaries, osp.join(args.out_dir, 'vis'), osp.join(
        args.out_dir, 'preds')


def predict_segmentation(cfg, args, images):
    import numpy as np
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint,
                                 device=args.device)
    require_exact_fit(inferencer.model, args.checkpoint)
    summaries = []
    for path in images:
        result = inferencer(path, out_dir=args.out_dir,
                            opacity=args.opacity, with_labels=False,
                            return_datasamples=True)
        if isinstance(result, list):
            result = result[0]
        classes = np.unique(result.pred_sem_seg.data.cpu().numpy())
        summaries.append(f'{len(classes)} classes predicted')
    return summaries, osp.join(args.out_dir, 'vis'), osp.join(
        args.out_dir, 'pred')


def main(argv=None):
    args = parse_args(argv)
    images = list_images(args.input)
    cfg, scope = load_config(args.config, args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')
    if args.out and len(images) != 1:
        raise LaunchError(f'--out takes the picture of one image; '
                          f'{args.input} names {len(images)}')
    check_images(images)
    import torch
    from mmengine.registry import init_default_scope

    import mmmetaformer  # noqa: F401  (registers our modules)
    if args.device is None:
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    # The checkpoint supplies every weight; skip the ImageNet download.
    cfg.model.backbone.init_cfg = None
    # The inferencers find the image loader by this name and replace it
    # with their own (the images were checked above).
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform.type.split('.')[-1].endswith('ImageFromFile'):
            transform.type = 'LoadImageFromFile'
    init_default_scope(scope)
    predict = predict_detection if scope == 'mmdet' else \
        predict_segmentation
    summaries, vis_dir, pred_dir = predict(cfg, args, images)
    if args.out:
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        shutil.copyfile(osp.join(vis_dir, osp.basename(images[0])), args.out)
    for path, summary in zip(images[:-1], summaries):
        print(f'{path}: {summary}')
    print(f'{images[-1]}: {summaries[-1]}; wrote {len(images)} pictures to '
          f'{vis_dir} and predictions to {pred_dir}' +
          (f', and {args.out}' if args.out else ''))


if __name__ == '__main__':
    run_tool(main)
