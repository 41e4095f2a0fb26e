"""`make demo` shortened: the same tools/demo.py code path (toy sets, both
trainings through tools/train.py, validation with the real metrics, all
pictures) on tiny sets for a couple of iterations."""
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .helpers import REPO_ROOT

PICTURES = ('learning_curves.png', 'detections.jpg', 'segmentation.jpg')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    work = root / 'work'
    proc = subprocess.run(
        [sys.executable, 'tools/demo.py', '--work-dir', str(work),
         '--data-dir', str(root / 'data'), '--det-images', '4', '2',
         '--seg-images', '4', '2', '--det-img-size', '64',
         '--seg-img-size', '64', '--det-epochs', '2',
         '--seg-iters', '2'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work, proc.stdout


def test_demo_writes_the_pictures(demo):
    work, _ = demo
    curves = cv2.imread(str(work / 'learning_curves.png'))
    # 2 tasks x (loss, metric) panels drawn by matplotlib
    assert curves is not None and curves.shape[0] > 400 and \
        curves.shape[1] > 600
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
    image = cv2.imread(str(sorted((work.parent / 'data' / 'toy_ade20k' /
                                   'images' / 'validation').glob('*.jpg'))[0]))
    # the ground-truth overlay is not the image copied through
    assert np.abs(segmentation[:, :64].astype(float) - image).mean() > 5


def test_demo_reports_figures_times_and_files_last(demo):
    work, out = demo
    lines = out.strip().splitlines()
    assert re.search(r'Wall time \(min\): data [\d.]+, segmentation [\d.]+, '
                     r'detection [\d.]+, pictures [\d.]+; total [\d.]+', out)
    assert re.search(r'box mAP -?\d\.\d{3} \(mAP@0\.5 -?\d\.\d{3}\) on 2 ',
                     out)
    assert re.search(r'mIoU \d+\.\d \(aAcc \d+\.\d\) on 2 ', out)
    tail = '\n'.join(lines[-3:])
    for name in PICTURES:
        assert str(work / name) in tail
    # training progress with mmengine's ETA was echoed for both runs
    assert re.search(r'\[seg\] Iter\(train\).*eta: ', out)
    assert re.search(r'\[det\] Epoch\(train\).*eta: ', out)
