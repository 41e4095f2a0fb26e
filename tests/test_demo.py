"""`make demo` shortened: the same tools/demo.py code path (machine
measurement, toy sets, both trainings through tools/train.py, validation
with the real metrics, all pictures) on tiny sets and tiny models for a
couple of iterations; and the figure floors that make `make demo` fail.

The full demo (7-14 minutes of 2 cores) runs with
``MMMETAFORMER_FULL_DEMO=1``: it must reach box mAP 0.5 and mIoU 69.5, the
floors under its measured runs (docs/benchmarks.md: box mAP 0.61-0.72, mIoU
71.3-72.3 with the current schedules).
"""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .helpers import REPO_ROOT, load_tool, tiny_config

PICTURES = ('learning_curves.png', 'detections.jpg', 'segmentation.jpg')
FIGURE = re.compile(
    r'box mAP (-?\d\.\d{3}) \(mAP@0\.5 -?\d\.\d{3}\) on '
    r'(\d+) .*\n.*mIoU (-?\d+\.\d) \(aAcc'
)


# tools/demo.py with its two toy configs swapped for given ones, the rest
# of its code path as `make demo` runs it.
DEMO_WITH_CONFIGS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location('demo', 'tools/demo.py')
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
demo.DET_CONFIG, demo.SEG_CONFIG = sys.argv[1:3]
sys.exit(demo.main(sys.argv[3:]))
"""


def run_demo(root, *extra, configs=None, timeout=600):
    """tools/demo.py into ``root``; with ``configs`` (detection,
    segmentation) in place of its toy configs."""
    launch = ['tools/demo.py']
    if configs is not None:
        launch = ['-c', DEMO_WITH_CONFIGS, *map(str, configs)]
    return subprocess.run(
        [
            sys.executable,
            *launch,
            '--work-dir',
            str(root / 'work'),
            '--data-dir',
            str(root / 'data'),
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """One tiny demo run with the floors of `make demo`, which any tiny
    run's figures are below: the demo writes its pictures and report,
    then exits 3 (one run serves every test here). Its toy RetinaNet and
    Semantic FPN have a tiny PoolFormer and heads: the code path is the
    subject, and their checkpoints are then ~1 MB instead of ~50 MB."""
    root = tmp_path_factory.mktemp('demo')
    proc = run_demo(
        root,
        '--det-images',
        '4',
        '2',
        '--seg-images',
        '4',
        '2',
        '--det-img-size',
        '64',
        '--seg-img-size',
        '64',
        '--det-epochs',
        '2',
        '--seg-iters',
        '2',
        configs=(
            tiny_config(root, 'retinanet'),
            tiny_config(root, 'semantic_fpn'),
        ),
    )
    assert proc.returncode in (0, 3), (proc.stdout + proc.stderr)[-4000:]
    return root / 'work', proc


def test_demo_writes_the_pictures(demo):
    work, _ = demo
    curves = cv2.imread(str(work / 'learning_curves.png'))
    # 2 tasks x (loss, metric) panels drawn by matplotlib
    assert (
        curves is not None and curves.shape[0] > 400 and curves.shape[1] > 600
    )
    # plotted lines in matplotlib's blue and red, not a blank canvas
    assert ((curves[..., 0] > 150) & (curves[..., 2] < 100)).sum() > 100
    assert ((curves[..., 2] > 150) & (curves[..., 0] < 100)).sum() > 50

    detections = cv2.imread(str(work / 'detections.jpg'))
    # 2 val images at 64 px, drawn at 3x, 3 per row
    assert detections.shape == (192, 3 * 192, 3)
    assert detections[:, :384].std() > 10

    segmentation = cv2.imread(str(work / 'segmentation.jpg'))
    # 2 val images, ground truth | prediction each, 2 per row
    assert segmentation.shape == (64, 4 * 64, 3)
    image = cv2.imread(
        str(
            sorted(
                (
                    work.parent
                    / 'data'
                    / 'toy_ade20k'
                    / 'images'
                    / 'validation'
                ).glob('*.jpg')
            )[0]
        )
    )
    # the ground-truth overlay is not the image copied through
    assert np.abs(segmentation[:, :64].astype(float) - image).mean() > 5


def test_demo_reports_machine_figures_times_and_files(demo):
    work, proc = demo
    out = proc.stdout
    lines = out.strip().splitlines()
    assert re.search(
        r'fp32 GEMM \d+ GFLOP/s with \d+ threads: \d+ '
        r'segmentation iterations and \d+ detection epochs',
        out,
    )
    assert re.search(
        r'Wall time \(min\): machine [\d.]+, data [\d.]+, '
        r'segmentation [\d.]+, detection [\d.]+, pictures '
        r'[\d.]+; total [\d.]+',
        out,
    )
    box_map, images, miou = FIGURE.search(out).groups()
    # real metric values, not CocoMetric's -1 for "no ground truth"
    assert 0 <= float(box_map) <= 1 and images == '2'
    assert 0 <= float(miou) <= 100
    tail = '\n'.join(lines[-3:])
    for name in PICTURES:
        assert str(work / name) in tail
    assert re.search(
        r'\d+ boxes scoring >= 0\.3 on 2 val images, \d+ on '
        r'an object of their class',
        out,
    )
    # the detector's backbone came from the segmentor's checkpoint, every
    # backbone tensor of it
    loaded = re.search(
        r'\[det\] Loaded (\d+)/(\d+) tensors into PoolFormer '
        r'from \S+segmentation\S+\.pth',
        out,
    )
    assert loaded and loaded.group(1) == loaded.group(2), out
    # training progress with mmengine's ETA was echoed for both runs
    assert re.search(r'\[seg\] Iter\(train\).*eta: ', out)
    assert re.search(r'\[det\] Epoch\(train\).*eta: ', out)
    # the configs that ran are kept next to their runs
    assert (work / 'detection' / 'det_config.py').is_file()
    assert (work / 'segmentation' / 'seg_config.py').is_file()


def test_demo_fails_below_its_floors(demo):
    """A figure below its floor (here any tiny run's, against the floors of
    `make demo`) is exit status 3 and one line, after the pictures and the
    report were written."""
    work, proc = demo
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-3000:]
    assert re.fullmatch(
        r'error: box mAP \S+ is below 0\.5; mIoU \S+ is '
        r'below 69\.5',
        proc.stderr.strip().splitlines()[-1],
    )
    assert (work / 'learning_curves.png').is_file()


def demo_module():
    return load_tool('demo.py')


def test_schedule_fits_the_budget_where_the_machine_allows():
    demo = demo_module()
    per_epoch = demo.DET_ITERS_PER_EPOCH
    full = (demo.FULL_ITERS['seg'], demo.FULL_ITERS['det'] // per_epoch)
    shortest = (demo.MIN_ITERS['seg'], demo.MIN_ITERS['det'] // per_epoch)
    # A machine as fast as the one the recipes were tuned on: the full
    # schedules, within the budget.
    seg, det, seconds = demo.plan_schedule(136.0, 14)
    assert (seg, det) == full and seconds <= 14 * 60
    # Half as fast (about 65 GFLOP/s): shortened, never below the shortest
    # schedules, and still within the budget.
    seg, det, seconds = demo.plan_schedule(65.0, 14)
    assert shortest[0] <= seg < full[0] and det == shortest[1]
    assert seconds <= 14 * 60
    # More budget, the full schedules; slower, never below the shortest.
    assert demo.plan_schedule(65.0, 20)[:2] == full
    assert demo.plan_schedule(20.0, 14)[:2] == shortest


def test_overrides_are_by_name():
    """The demo changes the Resize scale of every pipeline and the
    schedulers' ends by type, whatever their position in the lists."""
    demo = demo_module()
    det = demo.det_config('somewhere', 96, 3)
    scales = [t.scale for t in demo.transforms(det, 'Resize')]
    assert scales == [(96, 96)] * 3
    cosine = demo.scheduler(det, 'CosineAnnealingLR')
    assert (cosine.T_max, cosine.end, det.train_cfg.max_epochs) == (3, 3, 3)
    assert det.test_dataloader.dataset.data_root == 'somewhere/'
    assert det.model.backbone.init_cfg is None  # the toy config: scratch
    lr = det.optim_wrapper.optimizer.lr
    det = demo.det_config('somewhere', 96, 3, backbone_from='seg.pth')
    assert det.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='seg.pth'
    )
    assert det.optim_wrapper.optimizer.lr == demo.DET_LR_FROM_BACKBONE != lr
    seg = demo.seg_config('there', 250)
    assert demo.scheduler(seg, 'PolyLR').end == 250
    assert seg.train_cfg.max_iters == 250


@pytest.fixture(scope='module')
def toy_detector(tmp_path_factory):
    """The demo's detection config (with a tiny backbone and heads: the
    labels are the subject) on a 2-image toy set and two untrained
    checkpoints of it: one written by the Runner (its ``meta`` names the
    classes) and the same weights without ``meta``. Label 0 (airplane)
    scores ~1 on every anchor, so every drawn box carries it."""
    from mmmetaformer_tools import toy
    from mmmetaformer_tools.launch import build_runner

    import torch

    demo = demo_module()
    root = tmp_path_factory.mktemp('toy_detector')
    demo.DET_CONFIG = str(tiny_config(root, 'retinanet'))
    data = toy.make_coco(
        root / 'toy_coco', num_train=2, num_val=2, img_size=64
    )
    cfg = demo.det_config(str(data), 64, 1)
    cfg.work_dir = str(root / 'work')
    config = root / 'det_config.py'
    cfg.dump(str(config))
    runner = build_runner(cfg)
    cls_bias = runner.model.bbox_head.retina_cls.bias
    with torch.no_grad():  # channels: anchor-major, then class
        cls_bias.fill_(-10.0)
        cls_bias[:: runner.model.bbox_head.num_classes] = 10.0
    runner.save_checkpoint(
        str(root),
        'with_meta.pth',
        save_optimizer=False,
        save_param_scheduler=False,
    )
    torch.save(
        {'state_dict': runner.model.state_dict()}, root / 'weights_only.pth'
    )
    val = sorted((data / 'val2017').glob('*.jpg'))
    return demo, config, root, val, data / 'annotations'


@pytest.mark.parametrize('weights', ['with_meta.pth', 'weights_only.pth'])
def test_detection_picture_names_the_toy_classes(
    toy_detector, weights, monkeypatch
):
    """The labels drawn in detections.jpg are the toy set's class names
    with the shape each stands for, whether or not the checkpoint carries
    them (without, DetInferencer's fallback, the 80 COCO names, would draw
    label 0 as "person")."""
    from mmmetaformer_tools import toy

    from mmdet.visualization import DetLocalVisualizer

    demo, config, root, val, annotations = toy_detector
    ann_file = annotations / 'instances_val2017.json'
    categories = json.loads(ann_file.read_text())['categories']
    shapes = {
        category: shape for shape, category in toy.SHAPE_CATEGORY.items()
    }
    toy_classes = tuple(
        f'{c["name"]} ({shapes[c["name"]]})'
        for c in categories
        if c['name'] in shapes
    )
    drawn, draw_texts = [], DetLocalVisualizer.draw_texts

    def record(visualizer, texts, *args, **kwargs):
        drawn.append((tuple(visualizer.dataset_meta['classes']), texts))
        return draw_texts(visualizer, texts, *args, **kwargs)

    monkeypatch.setattr(DetLocalVisualizer, 'draw_texts', record)
    out = root / f'{weights}.jpg'
    boxes, _ = demo.draw_detections(
        str(config), str(root / weights), val, str(ann_file), str(out)
    )
    assert boxes > 0 and len(drawn) == boxes
    assert {classes for classes, _ in drawn} == {toy_classes}
    assert {text.split(':')[0] for _, text in drawn} == {'airplane (cross)'}
    assert cv2.imread(str(out)) is not None


@pytest.mark.skipif(
    os.environ.get('MMMETAFORMER_FULL_DEMO') != '1',
    reason='the full demo takes 7-14 minutes; set MMMETAFORMER_FULL_DEMO=1',
)
def test_full_demo_reaches_its_figures(tmp_path):
    proc = run_demo(tmp_path, timeout=3600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    box_map, _, miou = FIGURE.search(proc.stdout).groups()
    assert float(box_map) >= 0.5 and float(miou) >= 69.5
