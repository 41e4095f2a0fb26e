"""`make demo`: a segmentor trained from scratch on CPU and a detector
built on its backbone, shown in pictures.

0. machine: measures the fp32 matrix-multiply rate with the threads torch
   uses and sizes both schedules so the demo ends within ``--budget``
   minutes (600 segmentation and 400 detection iterations where the
   machine allows).
1. data: makes the synthetic toy COCO and ADE20K sets
   (``mmmetaformer_tools.toy``) under ``data/`` unless they are there.
2. segmentation: trains
   ``configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py`` from scratch
   through ``tools/train.py`` (the real launcher, in a subprocess); mmseg's
   IoUMetric on the held-out validation images at intervals.
3. detection: trains ``configs/toy/retinanet_poolformer_s12_toy_coco.py``
   the same way, its backbone initialised from the segmentor's checkpoint
   (``init_cfg=dict(type='Pretrained', ...)``: the package reads the
   backbone out of an mmseg checkpoint), as the real recipes start from
   pretrained weights; mmdet's CocoMetric on the held-out images every
   epoch.
4. pictures, into the work dir: the learning curves, detections drawn by
   mmdet's ``DetInferencer`` (labelled with the toy set's class names,
   whatever the checkpoint's meta holds) and segmentation predicted by
   mmseg's ``MMSegInferencer`` next to the ground truth.

Config values are changed by name (the key, or a pipeline transform's and
a scheduler's ``type``), never by list position; the config that ran is
saved next to its run. The final figures are the last validation of each
run; the demo exits with status 3 if one is below ``--min-box-map`` or
``--min-miou``. The schedules were chosen on a separate toy split (another
seed), never on these validation images (see the toy configs).
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
# this clone's package, and the tools' own modules (mmmetaformer_tools)
sys.path[:0] = [ROOT, osp.join(ROOT, 'tools')]

import mmmetaformer_tools  # noqa: E402,F401  (quiets the frameworks' imports)

DET_CONFIG = 'configs/toy/retinanet_poolformer_s12_toy_coco.py'
SEG_CONFIG = 'configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py'
SCORE_THR = 0.3  # boxes drawn in the picture
ZOOM = 3  # pictures are drawn at 3x so the labels are legible
PROGRESS = re.compile(
    r'(Epoch|Iter)\((train|val)\)|Loaded \d+/\d+ tensors|'
    r'Error|error:'
)

# The schedule choices below were made on a dev split of the toy sets; the
# measurements behind them are in docs/benchmarks.md ("make demo").
# Seconds per training iteration as ``a + b / rate`` (rate: 2-thread fp32
# GEMM GFLOP/s), fitted to two measured machines (segmentation / detection).
SECONDS_PER_ITER = dict(seg=(0.183, 33.6), det=(0.204, 64.7))
# Data, process starts, validations and pictures on the slower machine.
OVERHEAD_S = 120
# Iterations where the machine allows: segmentation's recipe, and 4
# detection epochs from the segmentor's backbone.
FULL_ITERS = dict(seg=600, det=400)
# Slower machines: 3 detection epochs and as many segmentation iterations
# as fit, at least 500 (the fewest that reach the mIoU floor).
MIN_ITERS = dict(seg=500, det=300)
# Fine-tuning from the segmentor's backbone, the toy recipe's head learns
# faster at a larger lr than the recipe's 6e-4.
DET_LR_FROM_BACKBONE = 1e-3
DET_ITERS_PER_EPOCH = 100  # 800 images in batches of 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help='runs and pictures (default: work_dirs/demo)',
    )
    parser.add_argument(
        '--data-dir',
        default='data',
        help='where toy_coco/ and toy_ade20k/ are made or '
        'found (default: data)',
    )
    parser.add_argument(
        '--det-images',
        type=int,
        nargs=2,
        default=(800, 32),
        metavar=('TRAIN', 'VAL'),
        help='toy COCO images (default: 800 32)',
    )
    # 256 training scenes, not 64: 600 iterations of 4 crops saw each of 64
    # scenes 37 times and mIoU stalled.
    parser.add_argument(
        '--seg-images',
        type=int,
        nargs=2,
        default=(256, 16),
        metavar=('TRAIN', 'VAL'),
        help='toy ADE20K images (default: 256 16)',
    )
    parser.add_argument(
        '--det-img-size',
        type=int,
        default=128,
        help='toy COCO image side; the detector trains and '
        'tests at this size (default: 128)',
    )
    parser.add_argument(
        '--seg-img-size',
        type=int,
        default=256,
        help='toy ADE20K image side; the segmentor trains '
        'on 128 px crops of them (default: 256)',
    )
    parser.add_argument(
        '--budget',
        type=float,
        default=14.0,
        help='minutes the whole demo may take; sets the '
        'schedules from the measured GEMM rate '
        '(default: 14)',
    )
    parser.add_argument(
        '--det-epochs',
        type=int,
        default=None,
        help='detection epochs instead of the planned ones',
    )
    parser.add_argument(
        '--seg-iters',
        type=int,
        default=None,
        help='segmentation iterations instead of the planned ones',
    )
    parser.add_argument(
        '--min-box-map',
        type=float,
        default=0.5,
        help='exit 3 if box mAP ends below this (default: 0.5)',
    )
    parser.add_argument(
        '--min-miou',
        type=float,
        default=69.5,
        help='exit 3 if mIoU ends below this (default: 69.5)',
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------- machine --


def plan_schedule(rate, budget_min):
    """``(seg_iters, det_epochs, seconds)``: ``FULL_ITERS`` if they fit the
    budget at GEMM ``rate``; otherwise ``MIN_ITERS['det']`` detection
    iterations and as many segmentation iterations as fit, within
    ``MIN_ITERS['seg']`` and ``FULL_ITERS['seg']``. ``seconds`` is the
    estimate."""
    (a_s, b_s), (a_d, b_d) = SECONDS_PER_ITER['seg'], SECONDS_PER_ITER['det']
    seg_s, det_s = a_s + b_s / rate, a_d + b_d / rate
    budget_s = budget_min * 60 - OVERHEAD_S
    seg_iters, det_iters = FULL_ITERS['seg'], FULL_ITERS['det']
    if seg_iters * seg_s + det_iters * det_s > budget_s:
        det_iters = MIN_ITERS['det']
        fits = int((budget_s - det_iters * det_s) / seg_s) // 50 * 50
        seg_iters = min(seg_iters, max(MIN_ITERS['seg'], fits))
    return (
        seg_iters,
        det_iters // DET_ITERS_PER_EPOCH,
        OVERHEAD_S + seg_iters * seg_s + det_iters * det_s,
    )


# ------------------------------------------------------------------ data --


def toy_set(kind, root, num_train, num_val, img_size):
    """Make the toy set at ``root`` unless the same one is already there."""
    from mmmetaformer_tools import toy

    if kind == 'coco':
        ann = osp.join(root, 'annotations', 'instances_{}2017.json')
        try:
            found = [json.load(open(ann.format(s))) for s in ('train', 'val')]
            same = (
                [len(f['images']) for f in found] == [num_train, num_val]
                and found[0]['images'][0]['width'] == img_size
                and found[0]['info'].get('version') == toy.COCO_VERSION
            )
        except (OSError, ValueError, KeyError, IndexError):
            same = False
        make = toy.make_coco
    else:
        folders = [
            osp.join(root, 'annotations', f)
            for f in ('training', 'validation')
        ]
        same = all(osp.isdir(f) for f in folders) and [
            len(os.listdir(f)) for f in folders
        ] == [num_train, num_val]
        make = toy.make_ade20k
    if same:
        print(f'Using the toy {kind} set in {root}')
    else:
        make(
            root,
            num_train=num_train,
            num_val=num_val,
            img_size=img_size,
            overwrite=True,
            verbose=True,
        )


# --------------------------------------------------------------- configs --


def transforms(cfg, type_name):
    """Every ``type_name`` transform of every dataloader's pipeline."""
    found = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        found += [
            t for t in cfg[loader].dataset.pipeline if t.type == type_name
        ]
    return found


def scheduler(cfg, type_name):
    """The one ``param_scheduler`` entry of ``type_name``."""
    found = [s for s in cfg.param_scheduler if s.type == type_name]
    if len(found) != 1:
        sys.exit(
            f'expected one {type_name} in param_scheduler, found '
            f'{len(found)}: {[s.type for s in cfg.param_scheduler]}'
        )
    return found[0]


def seg_config(data_root, iters):
    from mmengine.config import Config

    cfg = Config.fromfile(SEG_CONFIG)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    if iters is not None:
        cfg.train_cfg.max_iters = iters
        cfg.train_cfg.val_interval = max(1, iters // 6)
        scheduler(cfg, 'PolyLR').end = iters
        cfg.default_hooks.checkpoint.interval = iters
    # Weights only: the checkpoints feed the detector's backbone and the
    # pictures; nothing resumes them, and optimizer state would triple them.
    cfg.default_hooks.checkpoint.save_optimizer = False
    return cfg


def det_config(data_root, img_size, epochs, backbone_from=None):
    """The toy RetinaNet on ``data_root``; with ``backbone_from`` (a
    checkpoint of any model with this backbone, an mmseg one here) its
    backbone starts from those weights instead of from scratch."""
    from mmengine.config import Config

    cfg = Config.fromfile(DET_CONFIG)
    if backbone_from is not None:
        cfg.model.backbone.init_cfg = dict(
            type='Pretrained', checkpoint=backbone_from
        )
        cfg.optim_wrapper.optimizer.lr = DET_LR_FROM_BACKBONE
    ann_file = osp.join(data_root, 'annotations', 'instances_val2017.json')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root + '/'
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = ann_file
    for resize in transforms(cfg, 'Resize'):  # train and test size
        resize.scale = (img_size, img_size)
    if epochs is not None:
        cfg.train_cfg.max_epochs = epochs
        cosine = scheduler(cfg, 'CosineAnnealingLR')
        cosine.T_max = cosine.end = epochs
        cfg.default_hooks.checkpoint.interval = epochs
    cfg.default_hooks.checkpoint.save_optimizer = False  # as seg_config
    return cfg


# -------------------------------------------------------------- training --


def train(name, cfg, work_dir):
    """Save ``cfg`` in ``work_dir`` and train it with tools/train.py,
    echoing its progress; return the run's folder."""
    os.makedirs(work_dir, exist_ok=True)
    config = osp.join(work_dir, f'{name}_config.py')
    cfg.dump(config)
    cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    print('$', ' '.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            lines.append(line)
            if PROGRESS.search(line):
                text = re.sub(r'^.*? - mmengine - \w+ - ', '', line.rstrip())
                print(f'  [{name}] {text[:160]}', flush=True)
    if proc.returncode != 0:
        sys.stdout.write(''.join(lines[-40:]))
        sys.exit(f'{name} training failed (exit code {proc.returncode})')
    runs = sorted(
        d
        for d in os.listdir(work_dir)
        if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json'))
    )
    return osp.join(work_dir, runs[-1]), config


def scalars(run_dir):
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


def losses(records):
    return [(r['step'], r['loss']) for r in records if 'loss' in r]


def validations(records, iters_per_epoch=1):
    """``[(iteration, metrics)]``: the records without an lr. Epoch-based
    runs log them by epoch, turned into iterations here."""
    return [(r['step'] * iters_per_epoch, r) for r in records if 'lr' not in r]


def checkpoint_of(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


# -------------------------------------------------------------- pictures --


def plot_curves(path, panels):
    """One row per task: training loss, validation metric vs iteration."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(panels), 2, figsize=(10, 3.4 * len(panels)), squeeze=False
    )
    for row, (title, losses, metric_name, val) in zip(axes, panels):
        row[0].plot(*zip(*losses), lw=1, color='tab:blue')
        row[0].set(
            title=f'{title}: training loss', xlabel='iteration', ylabel='loss'
        )
        row[1].plot(*zip(*val), marker='o', color='tab:red')
        row[1].set(
            title=f'{title}: {metric_name}, held-out images',
            xlabel='iteration',
            ylabel=metric_name,
        )
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
    rows = [
        np.concatenate(
            [
                np.pad(
                    i,
                    (
                        (0, height - i.shape[0]),
                        (0, width - i.shape[1]),
                        (0, 0),
                    ),
                    constant_values=255,
                )
                for i in images[k : k + columns]
            ],
            axis=1,
        )
        for k in range(0, len(images), columns)
    ]
    return np.concatenate(rows, axis=0)


def for_inferencer(config):
    """``config`` loaded for mmdet's and mmseg's inferencers."""
    from mmmetaformer_tools.launch import name_image_loader_for_inferencers

    from mmengine.config import Config

    return name_image_loader_for_inferencers(Config.fromfile(config))


def box_iou(a, b):
    import numpy as np

    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def label_names(dataset_cfg):
    """The name of each label the detector learns from ``dataset_cfg``, as
    mmdet numbers them: label ``i`` is the ``i``-th of the dataset's
    ``cat_ids`` (the annotation file's categories among the config's
    classes, in the file's order)."""
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[]))
    with open(dataset.ann_file) as f:
        names = {c['id']: c['name'] for c in json.load(f)['categories']}
    return tuple(names[i] for i in dataset.cat_ids)


def det_inferencer(config, checkpoint):
    """mmdet's DetInferencer of ``checkpoint``, its labels named by the
    config's dataset.

    DetInferencer names labels by the checkpoint's ``meta['dataset_meta']``
    and, where a checkpoint has none (weights re-saved or converted without
    their meta), by the 80 COCO classes: label 0 of the toy detector, an
    airplane, would be drawn as "person". The names are taken from the
    dataset the detector was trained on instead, for the model and the
    visualizer alike; a checkpoint that names other classes is reported.
    The toy images draw each of those COCO classes as a shape, so the
    picture labels a box with both ("airplane (cross)"): a cross labelled
    "kite (triangle)" then reads as the confusion it is.
    """
    from mmmetaformer_tools.toy import SHAPE_CATEGORY

    from mmdet.apis import DetInferencer

    shapes = {category: shape for shape, category in SHAPE_CATEGORY.items()}
    cfg = for_inferencer(config)
    classes = label_names(cfg.test_dataloader.dataset)
    inferencer = DetInferencer(
        model=cfg, weights=checkpoint, device='cpu', show_progress=False
    )
    heads = inferencer.model.bbox_head.num_classes
    if heads != len(classes):
        sys.exit(
            f'{checkpoint}: the detector predicts {heads} classes, '
            f'its dataset in {config} names {len(classes)}'
        )
    meta = inferencer.model.dataset_meta
    if tuple(meta.get('classes') or ()) != classes:
        print(
            f'  {checkpoint} names other classes than its dataset '
            f'({", ".join(list(meta.get("classes") or ["none"])[:3])} '
            "...); drawing the dataset's",
            flush=True,
        )
    meta['classes'] = classes
    inferencer.visualizer.dataset_meta = dict(
        meta,
        classes=tuple(
            f'{name} ({shapes[name]})' if name in shapes else name
            for name in classes
        ),
    )
    return inferencer


def draw_detections(config, checkpoint, images, ann_file, out):
    """Boxes scoring >= SCORE_THR on ``images``, predicted and drawn by
    mmdet's DetInferencer at ZOOM x, labelled with the class names of the
    config's dataset (``det_inferencer``). Returns ``(boxes, right)``: the
    boxes drawn and how many of them overlap (IoU >= 0.5) a ground-truth
    object of the class their label names."""
    import mmcv
    import numpy as np
    from mmcv.ops import nms

    inferencer = det_inferencer(config, checkpoint)
    classes = inferencer.model.dataset_meta['classes']
    with open(ann_file) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    ids = {i['file_name']: i['id'] for i in coco['images']}
    drawn, count, right = [], 0, 0
    for path in images:
        # The test pipeline resizes to the trained size, so the model sees
        # the image as in validation; boxes come back in zoomed pixels.
        image = mmcv.imrescale(mmcv.imread(path, channel_order='rgb'), ZOOM)
        result = inferencer(image, return_datasamples=True, no_save_vis=True)[
            'predictions'
        ][0]
        keep = result.pred_instances[result.pred_instances.scores >= SCORE_THR]
        # For the picture only (the metric sees every box): of boxes of
        # different classes on one object, the best-scoring one.
        keep = keep[nms(keep.bboxes, keep.scores, iou_threshold=0.5)[1]]
        result.pred_instances = keep
        count += len(keep)
        gt = [
            a
            for a in coco['annotations']
            if a['image_id'] == ids[osp.basename(path)]
        ]
        if len(keep) and gt:
            gt_boxes = np.array(
                [
                    [x, y, x + w, y + h]
                    for x, y, w, h in (a['bbox'] for a in gt)
                ]
            )
            iou = box_iou(keep.bboxes.numpy() / ZOOM, gt_boxes)
            for k, label in enumerate(keep.labels.tolist()):
                match = iou[k].argmax()
                right += int(
                    iou[k, match] >= 0.5
                    and names[gt[match]['category_id']] == classes[label]
                )
        inferencer.visualizer.add_datasample(
            'det',
            image,
            data_sample=result,
            draw_gt=False,
            pred_score_thr=SCORE_THR,
        )
        drawn.append(inferencer.visualizer.get_image())
    mmcv.imwrite(tile(drawn, 3)[..., ::-1], out)
    return count, right


def draw_segmentation(config, checkpoint, images, out):
    """Ground truth next to the prediction of mmseg's MMSegInferencer."""
    import mmcv
    import torch
    from mmengine.structures import PixelData
    from mmseg.apis import MMSegInferencer
    from mmseg.structures import SegDataSample

    inferencer = MMSegInferencer(
        model=for_inferencer(config), weights=checkpoint, device='cpu'
    )
    inferencer.show_progress = False
    visualizer = inferencer.visualizer
    visualizer.alpha = 0.6
    drawn = []
    for path in images:
        result = inferencer(path, return_datasamples=True, show=False)
        label_path = osp.join(
            osp.dirname(osp.dirname(osp.dirname(path))),
            'annotations',
            'validation',
            osp.basename(path)[:-4] + '.png',
        )
        labels = torch.from_numpy(
            mmcv.imread(label_path, flag='unchanged').astype('int64') - 1
        )
        labels[labels < 0] = 255  # reduce_zero_label: 0 is ignored
        sample = SegDataSample(
            gt_sem_seg=PixelData(data=labels[None]),
            pred_sem_seg=result.pred_sem_seg,
        )
        image = mmcv.imread(path, channel_order='rgb')
        for gt in (True, False):
            visualizer.add_datasample(
                'seg',
                image,
                data_sample=sample,
                draw_gt=gt,
                draw_pred=not gt,
                with_labels=False,
            )
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

    print('== 0/4 machine', flush=True)
    from mmmetaformer_tools.measure import gemm_rate

    import torch

    rate = gemm_rate('cpu')
    seg_iters, det_epochs, estimate = plan_schedule(rate, args.budget)
    planned = (seg_iters, det_epochs)
    if args.seg_iters is not None:
        seg_iters = args.seg_iters
    if args.det_epochs is not None:
        det_epochs = args.det_epochs
    as_planned = planned == (seg_iters, det_epochs)
    how = f'about {estimate / 60:.0f} min' if as_planned else 'as given'
    print(
        f'fp32 GEMM {rate:.0f} GFLOP/s with {torch.get_num_threads()} '
        f'threads: {seg_iters} segmentation iterations and {det_epochs} '
        f'detection epochs ({det_epochs * DET_ITERS_PER_EPOCH} '
        f'iterations), {how}',
        flush=True,
    )
    if as_planned and (seg_iters, det_epochs * DET_ITERS_PER_EPOCH) != (
        FULL_ITERS['seg'],
        FULL_ITERS['det'],
    ):
        print(
            f'  (shortened from {FULL_ITERS["seg"]} and '
            f'{FULL_ITERS["det"]} to fit {args.budget:g} min)',
            flush=True,
        )
    phases['machine'] = time.time() - start

    print('== 1/4 data', flush=True)
    mark = time.time()
    toy_set('coco', coco_root, *args.det_images, args.det_img_size)
    toy_set('ade20k', ade_root, *args.seg_images, args.seg_img_size)
    phases['data'] = time.time() - mark

    print(
        '== 2/4 segmentation: Semantic FPN + PoolFormer-S12, from scratch',
        flush=True,
    )
    mark = time.time()
    seg_work = osp.join(args.work_dir, 'segmentation')
    seg_run, seg_cfg_path = train(
        'seg', seg_config(ade_root, seg_iters), seg_work
    )
    seg_losses = losses(scalars(seg_run))
    seg_vals = validations(scalars(seg_run))
    seg_checkpoint = checkpoint_of(seg_work)
    phases['segmentation'] = time.time() - mark

    print(
        '== 3/4 detection: RetinaNet + PoolFormer-S12, the backbone '
        "from the segmentor's checkpoint",
        flush=True,
    )
    mark = time.time()
    det_work = osp.join(args.work_dir, 'detection')
    det_cfg = det_config(
        coco_root, args.det_img_size, det_epochs, backbone_from=seg_checkpoint
    )
    det_run, det_cfg_path = train('det', det_cfg, det_work)
    iters_per_epoch = -(
        -args.det_images[0] // det_cfg.train_dataloader.batch_size
    )
    det_losses = losses(scalars(det_run))
    det_vals = validations(scalars(det_run), iters_per_epoch)
    phases['detection'] = time.time() - mark

    print('== 4/4 pictures', flush=True)
    mark = time.time()
    if not det_vals or 'coco/bbox_mAP' not in det_vals[-1][1]:
        # CocoMetric logs no mAP when no box passed the test threshold.
        print(
            "no box passed the detector's test threshold: box mAP 0",
            flush=True,
        )
    det_vals = [
        (i, dict({'coco/bbox_mAP': 0.0, 'coco/bbox_mAP_50': 0.0}, **v))
        for i, v in det_vals
    ]
    curves_png = osp.join(args.work_dir, 'learning_curves.png')
    plot_curves(
        curves_png,
        [  # in the order they trained
            (
                'Segmentation (toy ADE20K)',
                seg_losses,
                'mIoU',
                [(i, v['mIoU']) for i, v in seg_vals],
            ),
            (
                'Detection (toy COCO)',
                det_losses,
                'box mAP',
                [(i, v['coco/bbox_mAP']) for i, v in det_vals],
            ),
        ],
    )
    det_final, seg_final = det_vals[-1][1], seg_vals[-1][1]
    val_dir = osp.join(coco_root, 'val2017')
    det_images = [osp.join(val_dir, f) for f in sorted(os.listdir(val_dir))]
    det_jpg = osp.join(args.work_dir, 'detections.jpg')
    boxes, right = draw_detections(
        det_cfg_path,
        checkpoint_of(det_work),
        det_images[:6],
        det_cfg.val_evaluator.ann_file,
        det_jpg,
    )
    seg_val_dir = osp.join(ade_root, 'images', 'validation')
    seg_images = [
        osp.join(seg_val_dir, f) for f in sorted(os.listdir(seg_val_dir))
    ]
    seg_jpg = osp.join(args.work_dir, 'segmentation.jpg')
    draw_segmentation(seg_cfg_path, seg_checkpoint, seg_images[:4], seg_jpg)
    phases['pictures'] = time.time() - mark

    box_map, miou = det_final['coco/bbox_mAP'], seg_final['mIoU']
    minutes = ', '.join(f'{k} {v / 60:.1f}' for k, v in phases.items())
    print(
        f'\nWall time (min): {minutes}; total {(time.time() - start) / 60:.1f}'
    )
    print('Results on held-out validation images, trained on CPU:')
    print(
        f'  detection    RetinaNet + PoolFormer-S12: box mAP '
        f'{box_map:.3f} (mAP@0.5 {det_final["coco/bbox_mAP_50"]:.3f}) on '
        f'{args.det_images[1]} toy COCO images, CocoMetric'
    )
    print(
        f'  segmentation Semantic FPN + PoolFormer-S12: mIoU '
        f'{miou:.1f} (aAcc {seg_final["aAcc"]:.1f}) on '
        f'{args.seg_images[1]} toy ADE20K images, IoUMetric'
    )
    print(f'  {curves_png}  loss and box mAP / mIoU against iteration')
    print(
        f'  {det_jpg}  {boxes} boxes scoring >= {SCORE_THR} on '
        f'{min(6, len(det_images))} val images, {right} on an object of '
        'their class'
    )
    print(
        f'  {seg_jpg}  ground truth | prediction on '
        f'{min(4, len(seg_images))} val images'
    )
    low = [
        f'{name} {value:g} is below {floor:g}'
        for name, value, floor in (
            ('box mAP', box_map, args.min_box_map),
            ('mIoU', miou, args.min_miou),
        )
        if value < floor
    ]
    if low:
        print(f'error: {"; ".join(low)}', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
