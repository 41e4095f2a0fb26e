"""Draw a model's predictions on one image.

Detection configs (``default_scope='mmdet'``) get boxes, labels and scores
(and masks for instance segmentation); segmentation configs
(``default_scope='mmseg'``) get a colour overlay of the predicted classes.

    python tools/infer.py IMAGE CONFIG CHECKPOINT --out OUT.jpg

The checkpoint is read without running pickled code and must hold exactly
the model's tensors: otherwise the tool exits with an error before drawing.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmmetaformer.utils.launch import (LaunchError, load_config,  # noqa: E402
                                       run_tool)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the predictions of a detector or segmentor on an '
        'image')
    parser.add_argument('image', help='input image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True,
                        help='output image file (e.g. out.jpg)')
    parser.add_argument('--device', default=None,
                        help='cpu or cuda:0 (default: cuda if available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: hide boxes scoring below this')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: overlay opacity')
    return parser.parse_args(argv)


def require_exact_fit(model, checkpoint):
    """Refuse a checkpoint that left weights unloaded or brought others.

    mmdet's ``init_detector`` and mmseg's ``init_model`` load non-strictly
    (and only log mismatches); the file is read again (safely) to check.
    """
    from mmmetaformer.checkpoint import check_model_fits, read_checkpoint
    check_model_fits(model, read_checkpoint(checkpoint), checkpoint)


def draw_detection(cfg, args, image):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    model = init_detector(cfg, args.checkpoint, device=args.device)
    require_exact_fit(model, args.checkpoint)
    result = inference_detector(model, image)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample(
        'result', image, data_sample=result, draw_gt=False, show=False,
        pred_score_thr=args.score_thr, out_file=args.out)
    return len(result.pred_instances[
        result.pred_instances.scores >= args.score_thr])


def draw_segmentation(cfg, args, image):
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import VISUALIZERS
    # mmseg's inference reads the top-level ``test_pipeline``; use the test
    # dataloader's, as mmdet's does, so an override config's resize holds.
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    model = init_model(cfg, args.checkpoint, device=args.device)
    require_exact_fit(model, args.checkpoint)
    result = inference_model(model, image)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.alpha = args.opacity
    visualizer.add_datasample(
        'result', image, data_sample=result, draw_gt=False, show=False,
        with_labels=False, out_file=args.out)
    return len(result.pred_sem_seg.data.unique())


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise LaunchError(f'Image file not found: {args.image}')
    cfg, scope = load_config(args.config)
    if not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')
    import mmcv
    import torch
    from mmengine.registry import init_default_scope

    import mmmetaformer  # noqa: F401  (registers our modules)
    if args.device is None:
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    # The checkpoint supplies every weight; skip the ImageNet download.
    cfg.model.backbone.init_cfg = None
    init_default_scope(scope)
    image = mmcv.imread(args.image, channel_order='rgb')
    if image is None:
        raise LaunchError(f'cannot decode image {args.image}: it is corrupt '
                          'or not an image')
    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    if scope == 'mmdet':
        count = draw_detection(cfg, args, image)
        what = f'{count} detections scoring >= {args.score_thr}'
    else:
        count = draw_segmentation(cfg, args, image)
        what = f'{count} classes predicted'
    print(f'{what}; wrote {args.out}')


if __name__ == '__main__':
    run_tool(main)
