"""Tests for tools/misc/make_toy_dataset.py (synthetic COCO / ADE20K data)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

SCRIPT = Path(__file__).resolve().parents[1] / 'tools' / 'misc' / \
    'make_toy_dataset.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('make_toy_dataset', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toy = load_tool()

# First and last few of mmdet's CocoDataset classes with their COCO ids.
COCO_ID_SPOT_CHECKS = [(0, 1, 'person'), (11, 13, 'stop sign'),
                       (32, 37, 'sports ball'), (62, 72, 'tv'),
                       (79, 90, 'toothbrush')]


def tiny_coco(out_dir, seed=0):
    return toy.make_coco(out_dir, num_train=4, num_val=2, img_size=128,
                         seed=seed, max_objects=4)


def tiny_ade20k(out_dir, seed=0):
    return toy.make_ade20k(out_dir, num_train=4, num_val=2, img_size=96,
                           seed=seed)


def file_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return Path(tiny_coco(tmp_path_factory.mktemp('coco')))


def load_split(root: Path, split: str) -> dict:
    return json.loads(
        (root / 'annotations' / f'instances_{split}2017.json').read_text())


def test_coco_same_seed_gives_identical_files(coco_root, tmp_path):
    again = file_bytes(Path(tiny_coco(tmp_path / 'again')))
    first = file_bytes(coco_root)
    assert sorted(first) == sorted(again)
    assert len([name for name in first if name.endswith('.jpg')]) == 6
    for name, content in first.items():
        assert again[name] == content, name


def test_coco_other_seed_differs(coco_root, tmp_path):
    other = Path(tiny_coco(tmp_path / 'other', seed=1))
    assert load_split(other, 'train') != load_split(coco_root, 'train')


def test_coco_layout_and_categories(coco_root):
    for split, folder, count in (('train', 'train2017', 4),
                                 ('val', 'val2017', 2)):
        data = load_split(coco_root, split)
        assert {'info', 'licenses', 'images', 'annotations',
                'categories'} <= set(data)
        assert len(data['images']) == count
        for image in data['images']:
            pixels = cv2.imread(str(coco_root / folder / image['file_name']))
            assert pixels.shape == (image['height'], image['width'], 3)
            assert (image['width'], image['height']) == (128, 128)
        categories = data['categories']
        assert len(categories) == 80
        for index, cat_id, name in COCO_ID_SPOT_CHECKS:
            assert (categories[index]['id'],
                    categories[index]['name']) == (cat_id, name)
    train_ids = {im['id'] for im in load_split(coco_root, 'train')['images']}
    val_ids = {im['id'] for im in load_split(coco_root, 'val')['images']}
    assert not train_ids & val_ids


def test_coco_annotations_match_their_polygons(coco_root):
    for split in ('train', 'val'):
        data = load_split(coco_root, split)
        valid_ids = {cat['id'] for cat in data['categories']}
        sizes = {im['id']: (im['width'], im['height'])
                 for im in data['images']}
        assert data['annotations'], f'no annotations in {split}'
        ann_ids = [ann['id'] for ann in data['annotations']]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data['annotations']:
            assert ann['category_id'] in valid_ids
            assert ann['iscrowd'] == 0
            assert ann['area'] > 0
            width, height = sizes[ann['image_id']]
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0
            assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
            assert ann['segmentation']
            for polygon in ann['segmentation']:
                assert len(polygon) >= 6 and len(polygon) % 2 == 0
            points = np.concatenate(
                [np.reshape(p, (-1, 2)) for p in ann['segmentation']])
            assert abs(points[:, 0].min() - x) <= 1
            assert abs(points[:, 1].min() - y) <= 1
            assert abs(points[:, 0].max() - (x + w)) <= 2
            assert abs(points[:, 1].max() - (y + h)) <= 2


def test_coco_polygons_rasterize_to_area(coco_root):
    api = COCO(str(coco_root / 'annotations' / 'instances_train2017.json'))
    anns = api.loadAnns(api.getAnnIds())
    assert anns
    for ann in anns:
        mask = api.annToMask(ann)
        assert mask.shape == (128, 128)
        assert abs(int(mask.sum()) - ann['area']) <= 0.15 * ann['area'], ann


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return Path(tiny_ade20k(tmp_path_factory.mktemp('ade')))


def test_ade20k_layout_and_labels(ade_root):
    known = set(toy.ADE_LABELS.values())
    seen = set()
    for folder, count in (('training', 4), ('validation', 2)):
        images = sorted((ade_root / 'images' / folder).glob('*.jpg'))
        labels = sorted((ade_root / 'annotations' / folder).glob('*.png'))
        assert len(images) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        for image_path, label_path in zip(images, labels):
            image = cv2.imread(str(image_path))
            label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (96, 96, 3)
            assert label.shape == (96, 96) and label.dtype == np.uint8
            values = set(np.unique(label).tolist())
            assert values <= known | {0}, values
            seen |= values
    assert 0 in seen
    assert len(seen - {0}) >= 3


def test_ade20k_same_seed_gives_identical_files(ade_root, tmp_path):
    assert file_bytes(Path(tiny_ade20k(tmp_path / 'again'))) == \
        file_bytes(ade_root)


def test_cli_refuses_non_empty_dir_without_overwrite(tmp_path):
    out = tmp_path / 'busy'
    out.mkdir()
    (out / 'keep.txt').write_text('user file')
    command = [sys.executable, str(SCRIPT), 'coco', str(out), '--num-train',
               '1', '--num-val', '1', '--img-size', '64']
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2
    assert str(out) in refused.stderr and '--overwrite' in refused.stderr
    assert not (out / 'annotations').exists()

    replaced = subprocess.run(command + ['--overwrite'], capture_output=True,
                              text=True)
    assert replaced.returncode == 0, replaced.stderr
    assert (out / 'annotations' / 'instances_val2017.json').is_file()
    assert (out / 'keep.txt').read_text() == 'user file'


@pytest.mark.parametrize('argv, message', [
    (['voc', 'OUT'], "invalid choice: 'voc'"),
    (['coco', 'OUT', '--num-train', '0'], 'num_train must be at least 1, '
     'got 0'),
    (['ade20k', 'OUT', '--num-val', '-3'], 'num_val must be at least 1, '
     'got -3'),
    (['coco', 'OUT', '--max-objects', '0'], 'max_objects must be at least 1'),
    (['ade20k', 'OUT', '--img-size', '16'], 'got 16x16'),
    (['coco', 'OUT', '--img-size', '64', '20'], 'got 64x20'),
    (['coco', 'OUT', '--img-size', '1', '2', '3'], '[1, 2, 3]'),
])
def test_cli_rejects_bad_arguments(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / 'out') if a == 'OUT' else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        toy.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
