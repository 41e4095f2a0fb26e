"""`make demo`: a detector and a segmentor trained from scratch on CPU, shown
in pictures.

1. data: makes the synthetic toy COCO and ADE20K sets
   (``mmmetaformer.datasets.toy``) under ``data/`` unless they are there.
2. segmentation: trains
   ``configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py`` through
   ``tools/train.py`` (the real launcher, in a subprocess); mmseg's IoUMetric
   on the held-out validation images at intervals.
3. detection: trains ``configs/toy/retinanet_poolformer_s12_toy_coco.py``
   the same way; mmdet's CocoMetric on the held-out validation images after
   every epoch.
4. pictures, into the work dir: the learning curves (loss and mIoU / box mAP
   against iteration), detections drawn on validation images and
   segmentation overlays (ground truth next to prediction).

The final figures are the last validation of each run. The schedules were
chosen on a separate toy split (another seed), never on these validation
images (see the toy configs). Every phase prints its wall time; training
prints mmengine's progress lines with the ETA.
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

DET_CONFIG = 'configs/toy/retinanet_poolformer_s12_toy_coco.py'
SEG_CONFIG = 'configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py'
SCORE_THR = 0.3  # boxes drawn in the picture
PROGRESS = re.compile(r'(Epoch|Iter)\((train|val)\)|Error|error:')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo',
                        help='runs and pictures (default: work_dirs/demo)')
    parser.add_argument('--data-dir', default='data',
                        help='where toy_coco/ and toy_ade20k/ are made or '
                        'found (default: data)')
    parser.add_argument('--det-images', type=int, nargs=2, default=(800, 32),
                        metavar=('TRAIN', 'VAL'),
                        help='toy COCO images (default: 800 32)')
    # 256 training scenes, not 64: 600 iterations of 4 crops saw each of 64
    # scenes 37 times and mIoU stalled at 69 (dev split: 70.5 with 256).
    parser.add_argument('--seg-images', type=int, nargs=2, default=(256, 16),
                        metavar=('TRAIN', 'VAL'),
                        help='toy ADE20K images (default: 256 16)')
    parser.add_argument('--det-img-size', type=int, default=128,
                        help='toy COCO image side; the detector trains and '
                        'tests at this size (default: 128)')
    parser.add_argument('--seg-img-size', type=int, default=256,
                        help='toy ADE20K image side; the segmentor trains '
                        'on 128 px crops of them (default: 256)')
    parser.add_argument('--det-epochs', type=int, default=None,
                        help="override the detection config's max_epochs")
    parser.add_argument('--seg-iters', type=int, default=None,
                        help="override the segmentation config's max_iters")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ data --

def toy_set(kind, root, num_train, num_val, img_size):
    """Make the toy set at ``root`` unless the same one is already there."""
    from mmmetaformer.datasets import toy
    if kind == 'coco':
        ann = osp.join(root, 'annotations', 'instances_{}2017.json')
        try:
            found = [json.load(open(ann.format(s))) for s in ('train', 'val')]
            same = ([len(f['images']) for f in found] ==
                    [num_train, num_val] and
                    found[0]['images'][0]['width'] == img_size and
                    found[0]['info'].get('version') == toy.COCO_VERSION)
        except (OSError, ValueError, KeyError, IndexError):
            same = False
        make = toy.make_coco
    else:
        folders = [osp.join(root, 'annotations', f)
                   for f in ('training', 'validation')]
        same = all(osp.isdir(f) for f in folders) and \
            [len(os.listdir(f)) for f in folders] == [num_train, num_val]
        make = toy.make_ade20k
    if same:
        print(f'Using the toy {kind} set in {root}')
    else:
        make(root, num_train=num_train, num_val=num_val, img_size=img_size,
             overwrite=True, verbose=True)


# -------------------------------------------------------------- training --

def train(name, config, work_dir, options):
    """Run tools/train.py with ``options`` (a dict of config keys), echoing
    its progress; return the run's folder."""
    cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    if options:
        cmd += ['--cfg-options'] + [
            f'{k}=' + (f'({v[0]},{v[1]})' if isinstance(v, tuple) else str(v))
            for k, v in options.items()]
    print('$', ' '.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            if PROGRESS.search(line):
                text = re.sub(r'^.*? - mmengine - \w+ - ', '', line.rstrip())
                print(f'  [{name}] {text[:160]}', flush=True)
    if proc.returncode != 0:
        sys.stdout.write(''.join(lines[-40:]))
        sys.exit(f'{name} training failed (exit code {proc.returncode})')
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data',
                                         'scalars.json')))
    return osp.join(work_dir, runs[-1])


def scalars(run_dir):
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


def losses(records):
    return [(r['step'], r['loss']) for r in records if 'loss' in r]


def validations(records, iters_per_epoch=1):
    """``[(iteration, metrics)]``: the records without an lr. Epoch-based
    runs log them by epoch, turned into iterations here. CocoMetric logs no
    mAP at all when no box scored above the test threshold: 0 then."""
    return [(r['step'] * iters_per_epoch, dict({'coco/bbox_mAP': 0.0,
                                                'coco/bbox_mAP_50': 0.0}, **r))
            for r in records if 'lr' not in r]


def checkpoint_of(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


# -------------------------------------------------------------- pictures --

def plot_curves(path, panels):
    """One row per task: training loss, validation metric vs iteration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.4 * len(panels)),
                             squeeze=False)
    for row, (title, losses, metric_name, val) in zip(axes, panels):
        row[0].plot(*zip(*losses), lw=1, color='tab:blue')
        row[0].set(title=f'{title}: training loss', xlabel='iteration',
                   ylabel='loss')
        row[1].plot(*zip(*val), marker='o', color='tab:red')
        row[1].set(title=f'{title}: {metric_name}, held-out val images',
                   xlabel='iteration', ylabel=metric_name)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def tile(images, columns):
    import numpy as np
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    blank = np.full((height, width, 3), 255, np.uint8)
    images = list(images) + [blank] * (-len(images) % columns)
    rows = [np.concatenate([np.pad(i, ((0, height - i.shape[0]),
                                       (0, width - i.shape[1]), (0, 0)),
                                   constant_values=255)
                            for i in images[k:k + columns]], axis=1)
            for k in range(0, len(images), columns)]
    return np.concatenate(rows, axis=0)


def draw_detections(config, checkpoint, images, options, out, zoom=3):
    """Boxes scoring >= SCORE_THR on ``images`` (drawn at ``zoom``x so the
    labels are legible); return the number of boxes."""
    import mmcv
    from mmcv.ops import nms
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    model = init_detector(cfg, checkpoint, device='cpu')
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='demo_det'))
    visualizer.dataset_meta = model.dataset_meta
    drawn, count = [], 0
    for path in images:
        result = inference_detector(model, path)
        keep = result.pred_instances[
            result.pred_instances.scores >= SCORE_THR]
        # For the picture only (the metric sees every box): of boxes of
        # different classes on one object, the best-scoring one.
        keep = keep[nms(keep.bboxes, keep.scores, iou_threshold=0.5)[1]]
        keep.bboxes = keep.bboxes * zoom
        result.pred_instances = keep
        count += len(keep)
        image = mmcv.imrescale(mmcv.imread(path, channel_order='rgb'), zoom)
        visualizer.add_datasample('det', image, data_sample=result,
                                  draw_gt=False, pred_score_thr=SCORE_THR)
        drawn.append(visualizer.get_image())
    mmcv.imwrite(tile(drawn, 3)[..., ::-1], out)
    return count


def draw_segmentation(config, checkpoint, images, options, out):
    """Ground truth next to prediction, as colour overlays."""
    import mmcv
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import VISUALIZERS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    import torch
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline  # as infer.py
    model = init_model(cfg, checkpoint, device='cpu')
    visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='demo_seg',
                                        alpha=0.6))
    visualizer.dataset_meta = model.dataset_meta
    drawn = []
    for path in images:
        result = inference_model(model, path)
        label_path = osp.join(osp.dirname(osp.dirname(osp.dirname(path))),
                              'annotations', 'validation',
                              osp.basename(path)[:-4] + '.png')
        labels = torch.from_numpy(
            mmcv.imread(label_path, flag='unchanged').astype('int64') - 1)
        labels[labels < 0] = 255  # reduce_zero_label: 0 is ignored
        sample = SegDataSample(gt_sem_seg=PixelData(data=labels[None]),
                               pred_sem_seg=result.pred_sem_seg)
        image = mmcv.imread(path, channel_order='rgb')
        for gt in (True, False):
            visualizer.add_datasample('seg', image, data_sample=sample,
                                      draw_gt=gt, draw_pred=not gt,
                                      with_labels=False)
            drawn.append(visualizer.get_image())
    mmcv.imwrite(tile(drawn, 4)[..., ::-1], out)


# ------------------------------------------------------------------ main --

def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    start = time.time()
    phases = {}
    coco_root = osp.join(args.data_dir, 'toy_coco')
    ade_root = osp.join(args.data_dir, 'toy_ade20k')
    os.makedirs(args.work_dir, exist_ok=True)

    print('== 1/4 data', flush=True)
    toy_set('coco', coco_root, *args.det_images, args.det_img_size)
    toy_set('ade20k', ade_root, *args.seg_images, args.seg_img_size)
    phases['data'] = time.time() - start

    print('== 2/4 segmentation: Semantic FPN + PoolFormer-S12, from scratch',
          flush=True)
    mark = time.time()
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    seg_options = {f'{k}.dataset.data_root': ade_root for k in loaders}
    if args.seg_iters is not None:
        seg_options.update({
            'train_cfg.max_iters': args.seg_iters,
            'train_cfg.val_interval': args.seg_iters,
            'param_scheduler.1.end': args.seg_iters,
            'default_hooks.checkpoint.interval': args.seg_iters})
    seg_work = osp.join(args.work_dir, 'segmentation')
    seg_run = train('seg', SEG_CONFIG, seg_work, seg_options)
    seg_losses, seg_vals = losses(scalars(seg_run)), validations(
        scalars(seg_run))
    phases['segmentation'] = time.time() - mark

    print('== 3/4 detection: RetinaNet + PoolFormer-S12, from scratch',
          flush=True)
    mark = time.time()
    det_options = {f'{k}.dataset.data_root': coco_root + '/' for k in loaders}
    ann_file = osp.join(coco_root, 'annotations', 'instances_val2017.json')
    det_options.update({'val_evaluator.ann_file': ann_file,
                        'test_evaluator.ann_file': ann_file})
    scale = (args.det_img_size, args.det_img_size)  # train and test size
    det_options.update({
        'train_dataloader.dataset.pipeline.2.scale': scale,
        'val_dataloader.dataset.pipeline.1.scale': scale,
        'test_dataloader.dataset.pipeline.1.scale': scale})
    if args.det_epochs is not None:
        det_options.update({
            'train_cfg.max_epochs': args.det_epochs,
            'param_scheduler.1.T_max': args.det_epochs,
            'param_scheduler.1.end': args.det_epochs,
            'default_hooks.checkpoint.interval': args.det_epochs})
    det_work = osp.join(args.work_dir, 'detection')
    det_run = train('det', DET_CONFIG, det_work, det_options)
    from mmengine.config import Config
    batch = Config.fromfile(DET_CONFIG).train_dataloader.batch_size
    iters_per_epoch = -(-args.det_images[0] // batch)
    det_losses, det_vals = losses(scalars(det_run)), validations(
        scalars(det_run), iters_per_epoch)
    phases['detection'] = time.time() - mark

    print('== 4/4 pictures', flush=True)
    mark = time.time()
    curves_png = osp.join(args.work_dir, 'learning_curves.png')
    plot_curves(curves_png, [
        ('Detection (toy COCO)', det_losses, 'box mAP',
         [(i, v['coco/bbox_mAP']) for i, v in det_vals]),
        ('Segmentation (toy ADE20K)', seg_losses, 'mIoU',
         [(i, v['mIoU']) for i, v in seg_vals])])
    det_final, seg_final = det_vals[-1][1], seg_vals[-1][1]
    val_dir = osp.join(coco_root, 'val2017')
    det_images = [osp.join(val_dir, f) for f in sorted(os.listdir(val_dir))]
    det_jpg = osp.join(args.work_dir, 'detections.jpg')
    boxes = draw_detections(DET_CONFIG, checkpoint_of(det_work),
                            det_images[:6], det_options, det_jpg)
    seg_val_dir = osp.join(ade_root, 'images', 'validation')
    seg_images = [osp.join(seg_val_dir, f)
                  for f in sorted(os.listdir(seg_val_dir))]
    seg_jpg = osp.join(args.work_dir, 'segmentation.jpg')
    draw_segmentation(SEG_CONFIG, checkpoint_of(seg_work), seg_images[:4],
                      seg_options, seg_jpg)
    phases['pictures'] = time.time() - mark

    minutes = ', '.join(f'{k} {v / 60:.1f}' for k, v in phases.items())
    print(f'\nWall time (min): {minutes}; total '
          f'{(time.time() - start) / 60:.1f}')
    print('Results on held-out validation images, from scratch on CPU:')
    print(f'  detection    RetinaNet + PoolFormer-S12: box mAP '
          f'{det_final["coco/bbox_mAP"]:.3f} (mAP@0.5 '
          f'{det_final["coco/bbox_mAP_50"]:.3f}) on {args.det_images[1]} '
          f'toy COCO images, CocoMetric')
    print(f'  segmentation Semantic FPN + PoolFormer-S12: mIoU '
          f'{seg_final["mIoU"]:.1f} (aAcc {seg_final["aAcc"]:.1f}) on '
          f'{args.seg_images[1]} toy ADE20K images, IoUMetric')
    print(f'  {curves_png}  loss and box mAP / mIoU against iteration')
    print(f'  {det_jpg}  {boxes} boxes scoring >= {SCORE_THR} on '
          f'{min(6, len(det_images))} val images')
    print(f'  {seg_jpg}  ground truth | prediction on '
          f'{min(4, len(seg_images))} val images')


if __name__ == '__main__':
    main()
