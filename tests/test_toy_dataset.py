"""The toy data generator (``mmmetaformer_tools.toy``) and its CLI
(``tools/misc/make_toy_dataset.py``): deterministic files in the real COCO
and ADE20K layouts that describe exactly what is drawn, read by the stock
mmdet/mmseg datasets and metrics."""

import json
import subprocess
import sys
from pathlib import Path

from mmmetaformer_tools import toy

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'tools' / 'misc' / 'make_toy_dataset.py'
SHAPE_IDS = {
    5: 'airplane',
    37: 'sports ball',
    38: 'kite',
    39: 'baseball bat',
    72: 'tv',
}


def tiny_coco(out_dir, seed=0):
    return toy.make_coco(
        out_dir, num_train=6, num_val=2, img_size=160, seed=seed, max_objects=4
    )


def tiny_ade20k(out_dir, seed=0):
    return toy.make_ade20k(
        out_dir, num_train=4, num_val=2, img_size=96, seed=seed
    )


def file_bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(Path(root).rglob('*'))
        if p.is_file()
    }


def load_split(root, split):
    return json.loads(
        (root / 'annotations' / f'instances_{split}2017.json').read_text()
    )


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return Path(tiny_coco(tmp_path_factory.mktemp('coco')))


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return Path(tiny_ade20k(tmp_path_factory.mktemp('ade')))


def test_same_seed_same_bytes_other_seed_differs(
    coco_root, ade_root, tmp_path
):
    assert file_bytes(tiny_coco(tmp_path / 'c')) == file_bytes(coco_root)
    assert file_bytes(tiny_ade20k(tmp_path / 'a')) == file_bytes(ade_root)
    assert load_split(
        tiny_coco(tmp_path / 'c1', seed=1), 'train'
    ) != load_split(coco_root, 'train')
    # image i does not depend on how many images are asked for
    fewer = toy.make_coco(
        tmp_path / 'few', num_train=2, num_val=1, img_size=160, max_objects=4
    )
    assert (fewer / 'train2017' / '000000000002.jpg').read_bytes() == (
        coco_root / 'train2017' / '000000000002.jpg'
    ).read_bytes()


def test_coco_categories_are_mmdets_with_real_ids(coco_root):
    from mmdet.datasets import CocoDataset

    categories = load_split(coco_root, 'val')['categories']
    assert [c['name'] for c in categories] == list(
        CocoDataset.METAINFO['classes']
    )
    ids = {c['name']: c['id'] for c in categories}
    assert {ids[name]: name for name in SHAPE_IDS.values()} == SHAPE_IDS
    assert (ids['person'], ids['stop sign'], ids['toothbrush']) == (1, 13, 90)
    assert {
        c['supercategory'] for c in categories if c['id'] in (1, 37, 90)
    } == {'person', 'sports', 'indoor'}


def test_coco_annotations_describe_exactly_what_is_drawn(coco_root):
    """Segment each object from the JPEG by colour (object vs nearby
    background) and compare with the annotation's polygon and box."""
    api = COCO(str(coco_root / 'annotations' / 'instances_train2017.json'))
    kernel = np.ones((3, 3), np.uint8)
    ious, box_errors = [], []
    for ann in api.loadAnns(api.getAnnIds()):
        image = api.imgs[ann['image_id']]
        pixels = cv2.imread(
            str(coco_root / 'train2017' / image['file_name'])
        ).astype(np.float32)
        mask = api.annToMask(ann)
        assert ann['category_id'] in SHAPE_IDS and ann['iscrowd'] == 0
        assert ann['area'] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert ann['bbox'] == [
            xs.min(),
            ys.min(),
            xs.max() - xs.min() + 1,
            ys.max() - ys.min() + 1,
        ]
        near = cv2.dilate(mask, kernel, iterations=4).astype(bool)
        ring = near & ~cv2.dilate(mask, kernel, iterations=2).astype(bool)
        inside = cv2.erode(mask, kernel, iterations=2).astype(bool)
        colour, background = (
            np.median(pixels[inside], 0),
            np.median(pixels[ring], 0),
        )
        seen = near & (
            np.linalg.norm(pixels - colour, axis=2)
            < np.linalg.norm(pixels - background, axis=2)
        )
        ious.append((seen & (mask > 0)).sum() / (seen | (mask > 0)).sum())
        ys, xs = np.nonzero(seen)
        x, y, w, h = ann['bbox']
        box_errors.append(
            max(
                abs(xs.min() - x),
                abs(ys.min() - y),
                abs(xs.max() + 1 - x - w),
                abs(ys.max() + 1 - y - h),
            )
        )
    assert len(ious) >= 6
    # JPEG blurs edges by about a pixel; half a pixel of misplaced polygon
    # would bring the mean IoU of these 30-70 px objects under 0.95
    assert np.mean(ious) > 0.97, ious
    assert np.mean(np.array(box_errors) <= 1) >= 0.9, box_errors


def test_stock_coco_dataset_and_metric_read_it(coco_root):
    from mmdet.datasets import CocoDataset
    from mmdet.evaluation import CocoMetric

    dataset = CocoDataset(
        data_root=str(coco_root),
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=[],
    )
    raw = load_split(coco_root, 'val')
    assert len(dataset) == len(raw['images']) == 2
    metric = CocoMetric(
        ann_file=str(coco_root / 'annotations' / 'instances_val2017.json'),
        metric=['bbox', 'segm'],
    )
    metric.dataset_meta = dataset.metainfo

    def evaluate(shift):
        for index in range(len(dataset)):
            info = dataset.get_data_info(index)
            boxes = torch.tensor([i['bbox'] for i in info['instances']])
            masks = np.stack(
                [
                    COCO.annToMask(metric._coco_api, ann)
                    for ann in metric._coco_api.imgToAnns[info['img_id']]
                ]
            )
            metric.process(
                {},
                [
                    dict(
                        img_id=info['img_id'],
                        ori_shape=(info['height'], info['width']),
                        pred_instances=dict(
                            bboxes=boxes + shift,
                            scores=torch.ones(len(boxes)),
                            labels=torch.tensor(
                                [i['bbox_label'] for i in info['instances']]
                            ),
                            masks=torch.from_numpy(masks).bool(),
                        ),
                    )
                ],
            )
        return metric.evaluate(len(dataset))

    labels = {
        dataset.metainfo['classes'].index(name) for name in SHAPE_IDS.values()
    }
    assert {
        i['bbox_label']
        for k in range(len(dataset))
        for i in dataset.get_data_info(k)['instances']
    } <= labels
    perfect = evaluate(0)
    assert perfect['coco/bbox_mAP'] == 1.0
    assert perfect['coco/segm_mAP'] == 1.0
    assert evaluate(torch.tensor([6.0, 6.0, 6.0, 6.0]))['coco/bbox_mAP'] < 0.9


def test_ade20k_labels_are_real_classes_and_follow_edges(ade_root):
    from mmseg.datasets import ADE20KDataset

    classes = ADE20KDataset.METAINFO['classes']
    assert {
        name: classes[label - 1] for name, label in toy.ADE_LABELS.items()
    } == {n: n for n in toy.ADE_LABELS}
    seen, seam_edges, inner_edges = set(), [], []
    for folder, count in (('training', 4), ('validation', 2)):
        images = sorted((ade_root / 'images' / folder).glob('*.jpg'))
        labels = sorted((ade_root / 'annotations' / folder).glob('*.png'))
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert len(images) == count
        for image_path, label_path in zip(images, labels):
            image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
            label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            assert image.shape == label.shape == (96, 96)
            assert label.dtype == np.uint8
            seen |= set(np.unique(label).tolist())
            edges = np.hypot(
                cv2.Sobel(image.astype(np.float32), -1, 1, 0),
                cv2.Sobel(image.astype(np.float32), -1, 0, 1),
            )
            inner = (
                cv2.erode(
                    (label > 0).astype(np.uint8), np.ones((5, 5), np.uint8)
                )
                > 0
            )
            seam_edges.append(edges[label == 0].mean())
            inner_edges.append(edges[inner].mean())
    assert seen <= set(toy.ADE_LABELS.values()) | {0}
    assert 0 in seen and len(seen) >= 5
    # the 0 seams sit on the picture's region borders
    assert np.mean(seam_edges) > 2 * np.mean(inner_edges)


def test_stock_ade20k_dataset_and_iou_metric_read_it(ade_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.transforms import LoadAnnotations
    from mmseg.evaluation import IoUMetric

    pipeline = [LoadAnnotations(reduce_zero_label=True)]
    dataset = ADE20KDataset(
        data_root=str(ade_root),
        data_prefix=dict(
            img_path='images/validation', seg_map_path='annotations/validation'
        ),
        pipeline=pipeline,
    )
    assert len(dataset) == 2
    metric = IoUMetric()
    metric.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        gt = torch.from_numpy(dataset[index]['gt_seg_map'].astype(np.int64))
        assert 255 in gt and gt[gt != 255].max() < 150
        metric.process(
            {},
            [
                dict(
                    pred_sem_seg=dict(data=gt[None]),
                    gt_sem_seg=dict(data=gt[None]),
                )
            ],
        )
    assert metric.evaluate(len(dataset))['mIoU'] == 100.0


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(num_train=0), 'num_train must be at least 1, got 0'),
        (dict(num_val=-3), 'num_val must be at least 1, got -3'),
        (dict(max_objects=0), 'max_objects must be at least 1, got 0'),
        (dict(seed=-1), 'seed must be non-negative, got -1'),
        (dict(img_size=16), 'got 16x16'),
        (dict(img_size=[64, 20]), 'got 64x20'),
        (dict(img_size=[1, 2, 3]), 'one value or two (W H), got [1, 2, 3]'),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message, tmp_path):
    with pytest.raises(
        ValueError,
        match=message.replace('(', r'\(')
        .replace(')', r'\)')
        .replace('[', r'\[')
        .replace(']', r'\]'),
    ):
        toy.make_coco(tmp_path / 'out', **kwargs)
    assert not (tmp_path / 'out').exists()


def test_cli_refuses_non_empty_dir_and_overwrites_only_its_own(tmp_path):
    out = tmp_path / 'busy'
    out.mkdir()
    (out / 'keep.txt').write_text('user file')
    command = [
        sys.executable,
        str(SCRIPT),
        'coco',
        str(out),
        '--num-train',
        '1',
        '--num-val',
        '1',
        '--img-size',
        '64',
        '--max-objects',
        '2',
    ]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2
    assert str(out) in refused.stderr and '--overwrite' in refused.stderr
    assert not (out / 'annotations').exists()
    replaced = subprocess.run(
        command + ['--overwrite'], capture_output=True, text=True
    )
    assert replaced.returncode == 0, replaced.stderr
    assert (out / 'annotations' / 'instances_val2017.json').is_file()
    assert (out / 'keep.txt').read_text() == 'user file'
