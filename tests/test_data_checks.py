"""Datasets are checked before training and testing; bad data is one line.

COCO: boxes mmdet would drop (NaN, negative size) are counted in a warning,
refused with ``--strict-data``; a repeated image id and a category id that
``categories`` does not list are errors. ADE20K: a label map declaring
60000x60000 pixels or of another size than its image is refused at startup
from its header; a label value beyond the classes when the map is loaded. A
JPEG cut mid-scan, with an end marker appended, is an error wherever images
are read. The toy datasets pass unchanged.
"""

import json
import logging
import os

from mmmetaformer_tools.toy import make_ade20k, make_coco

import cv2
import numpy as np
import pytest

from mmmetaformer.datasets.checks import (
    DataCheckError,
    check_coco_annotations,
    check_datasets,
    check_label_map,
    check_seg_files,
)
from mmmetaformer.datasets.images import (
    ImageError,
    decode_image,
    decode_label_map,
    read_image,
)

from .forked_tools import ForkedTool
from .helpers import REPO_ROOT
from .test_images import png_declaring

DET_CONFIG = REPO_ROOT / 'configs/toy/retinanet_poolformer_s12_toy_coco.py'
SEG_CONFIG = (
    REPO_ROOT / 'configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py'
)
SEG_TRAIN = [
    '--cfg-options',
    'train_dataloader.batch_size=1',
    'train_cfg.max_iters=1',
    'train_cfg.val_interval=10',
]
DET_TRAIN = [
    '--cfg-options',
    'train_dataloader.batch_size=1',
    'train_cfg.max_epochs=1',
]


# --------------------------------------------------------------- helpers --


def one_line(message, path):
    assert '\n' not in message and str(path) in message, message
    return message


def coco_file(path, images=2, annotations=(), categories=(1, 2)):
    """A COCO json with ``images`` 32x32 images and the given boxes:
    ``annotations`` is a list of ``(image_id, category_id, bbox)``."""
    image_list = (
        images
        if isinstance(images, list)
        else [
            {
                'id': i + 1,
                'file_name': f'{i + 1:012d}.jpg',
                'width': 32,
                'height': 32,
            }
            for i in range(images)
        ]
    )
    anns = [
        {
            'id': k + 1,
            'image_id': image_id,
            'category_id': category,
            'bbox': bbox,
            'area': 100.0,
            'iscrowd': 0,
        }
        for k, (image_id, category, bbox) in enumerate(annotations)
    ]
    path.write_text(
        json.dumps(
            {
                'images': image_list,
                'annotations': anns,
                'categories': [
                    {'id': c, 'name': f'class{c}'} for c in categories
                ],
            }
        )
    )
    return path


def cut_jpeg():
    """A valid JPEG cut in the middle of its scan, an end marker appended:
    the header and the end are whole, the pixels are not."""
    rng = np.random.default_rng(0)
    ok, data = cv2.imencode(
        '.jpg', rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    )
    data = data.tobytes()
    scan = data.rfind(b'\xff\xda')
    return data[: scan + (len(data) - scan) // 2] + b'\xff\xd9'


def warnings_logged(function, *args, **kwargs):
    """Messages of the warnings (and worse) ``function`` logs."""
    from mmengine.logging import MMLogger

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        function(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return [record.getMessage() for record in records]


def label_png(path, values, height=32, width=32):
    label = np.zeros((height, width), np.uint8)
    label.flat[: len(values)] = values
    assert cv2.imwrite(str(path), label)


# ------------------------------------------------------------ COCO, unit --


def test_nan_and_negative_boxes_are_counted_or_refused(tmp_path):
    ann = coco_file(
        tmp_path / 'a.json',
        annotations=[
            (1, 1, [2, 2, 20, 20]),
            (1, 2, [float('nan'), 2, 10, 10]),
            (2, 1, [4, 4, -5, 10]),
            (2, 2, [0, 0, 32, 32]),
        ],
    )
    dropped, total, first = check_coco_annotations(ann)
    assert (dropped, total) == (2, 4)
    assert first == (
        'annotation id 2 (image id 1) bbox [nan, 2, 10, 10]: '
        'a coordinate is not a finite number'
    )
    with pytest.raises(DataCheckError) as err:
        check_coco_annotations(ann, strict=True)
    assert one_line(str(err.value), ann).endswith(
        'annotation id 2 (image id 1) has bbox [nan, 2, 10, 10]: a '
        'coordinate is not a finite number; mmdet would drop it without a '
        'word. Fix or remove such boxes, or run without --strict-data to '
        'drop them'
    )
    coco_file(ann, annotations=[(1, 1, [4, 4, 10, -3])])
    with pytest.raises(DataCheckError, match='a negative width or height'):
        check_coco_annotations(ann, strict=True)


@pytest.mark.parametrize(
    'case,expected',
    [
        (
            'duplicate image id',
            'image id 1 is used twice, by '
            "'000000000001.jpg' and 'other.jpg'; the second would be trained "
            'and evaluated as the first. Give each image its own id',
        ),
        (
            'unknown category',
            'annotation id 1 (image id 1) has category_id 7, '
            'which "categories" does not list (ids: 1, 2); add the category '
            'or fix the id',
        ),
        (
            'unknown image',
            'annotation id 1 (image id 9) names no image of '
            '"images"; add the image or remove the annotation',
        ),
        ('duplicate annotation id', 'annotation id 1 is used twice'),
        (
            'bbox of three numbers',
            'has bbox [1, 2, 3]; a COCO bbox is four numbers',
        ),
    ],
)
def test_structural_problems_are_errors(case, expected, tmp_path):
    path = tmp_path / 'a.json'
    box = [2, 2, 10, 10]
    if case == 'duplicate image id':
        coco_file(
            path,
            images=[
                {
                    'id': 1,
                    'file_name': '000000000001.jpg',
                    'width': 32,
                    'height': 32,
                },
                {'id': 1, 'file_name': 'other.jpg', 'width': 32, 'height': 32},
            ],
        )
    elif case == 'duplicate annotation id':
        coco_file(path, annotations=[(1, 1, box), (2, 1, box)])
        coco = json.loads(path.read_text())
        coco['annotations'][1]['id'] = 1
        path.write_text(json.dumps(coco))
    else:
        image, category, bbox = dict(
            {
                'unknown category': (1, 7, box),
                'unknown image': (9, 1, box),
                'bbox of three numbers': (1, 1, [1, 2, 3]),
            }
        )[case]
        coco_file(path, annotations=[(image, category, bbox)])
    with pytest.raises(DataCheckError) as err:
        check_coco_annotations(path)
    assert expected in one_line(str(err.value), path)


# ---------------------------------------------------------- labels, unit --


def test_label_values_sizes_and_headers(tmp_path):
    """ADE20K's convention: 0 ignored, 1..150 the classes 0..149, 255
    ignored; anything else, a map of another size, or a header declaring
    60000x60000 pixels is one line naming the file."""
    good = np.array([[0, 1, 150, 255]], np.uint8)
    check_label_map(good, 'a.png', 150, reduce_zero_label=True)
    check_label_map(good - (good == 150), 'a.png', 150, False)
    with pytest.raises(ImageError) as err:
        check_label_map(
            np.array([[1, 199, 199]], np.uint8), 'a.png', 150, True
        )
    assert str(err.value) == (
        "a.png: label value 199 (2 pixels) is no class of the dataset's "
        '150: the values are 1..150 (the classes 0..149, '
        'reduce_zero_label=True), 0 and 255 (ignored). Fix the label map, '
        "or the dataset's classes or reduce_zero_label"
    )
    with pytest.raises(ImageError, match='label value 150 '):
        check_label_map(good, 'a.png', 150, reduce_zero_label=False)
    # 16-bit maps are checked before mmseg's uint8 cast turns 256 into 0
    with pytest.raises(ImageError, match='label value 256 '):
        check_label_map(np.array([[256]], np.uint16), 'a.png', 150, False)
    with pytest.raises(
        ImageError, match='the label map is 4x1 but its image b.jpg is 32x32'
    ):
        check_label_map(
            good, 'a.png', 150, True, image_hw=(32, 32), image_name='b.jpg'
        )

    image, label = tmp_path / 'a.jpg', tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    label_png(label, [1, 2], height=32, width=48)
    data_list = [dict(img_path=str(image), seg_map_path=str(label))]
    with pytest.raises(DataCheckError) as err:
        check_seg_files(data_list)
    assert one_line(str(err.value), label).endswith(
        f'the label map is 48x32 but its image {image} is 32x32; a label '
        "map must have its image's size. Re-export it at that size"
    )
    label.write_bytes(png_declaring(60000, 60000, rows=1))
    with pytest.raises(ImageError) as err:
        check_seg_files(data_list)
    assert one_line(str(err.value), label).startswith(
        f'{label}: the PNG header declares 60000x60000 = 3600000000 pixels, '
        'more than max_pixels=100000000; not decoded'
    )
    with pytest.raises(ImageError, match='declares 60000x60000'):
        decode_label_map(label.read_bytes(), str(label))
    label.unlink()
    with pytest.raises(
        DataCheckError,
        match=f'^{label}: the label map of {image} does not exist',
    ):
        check_seg_files(data_list)


def test_label_maps_decode_as_mmseg_decodes_them(tmp_path):
    """Gray and palette PNGs give mmseg's arrays (palette: the indices)."""
    import mmcv
    from PIL import Image

    values = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) % 151
    gray = tmp_path / 'gray.png'
    Image.fromarray(values.astype(np.uint8)).save(gray)
    palette = tmp_path / 'palette.png'
    Image.fromarray(values.astype(np.uint8)).convert('P').save(palette)
    for path in (gray, palette):
        data = path.read_bytes()
        ours = decode_label_map(data, str(path))
        assert np.array_equal(
            ours, mmcv.imfrombytes(data, flag='unchanged', backend='pillow')
        )
    assert np.array_equal(decode_label_map(gray.read_bytes(), 'g'), values)


# ------------------------------------------------------------ JPEG, unit --


def test_jpeg_cut_mid_scan_is_an_error(tmp_path):
    """OpenCV decodes it with libjpeg's warning on stderr and returns a
    partly grey picture; the readers refuse it, naming the file."""
    path = tmp_path / 'cut.jpg'
    path.write_bytes(cut_jpeg())
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert one_line(str(err.value), path) == (
        f'{path}: corrupt JPEG data (libjpeg: "Corrupt JPEG data: premature '
        'end of data segment"); part of the picture would be grey. '
        'Re-encode the file from its source or remove it from the dataset'
    )
    from mmengine.registry import TRANSFORMS

    import mmmetaformer  # noqa: F401

    loader = TRANSFORMS.build(dict(type='LoadCheckedImageFromFile'))
    with pytest.raises(ImageError, match='corrupt JPEG data'):
        loader(dict(img_path=str(path)))
    # a whole JPEG reads, and other stderr output is passed on
    ok, whole = cv2.imencode('.jpg', np.zeros((32, 32, 3), np.uint8))
    assert decode_image(whole.tobytes(), 'whole.jpg').shape == (32, 32, 3)
    from mmmetaformer.datasets.images import _stderr_of_native_code

    with _stderr_of_native_code() as text:
        os.write(2, b'libpng warning: not from libjpeg\n')
    assert text == ['libpng warning: not from libjpeg\n']


# ------------------------------------------------------- the toy datasets --


@pytest.fixture(scope='module')
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp('toys')
    make_coco(
        root / 'clean/data/toy_coco',
        num_train=1,
        num_val=1,
        img_size=32,
        seed=0,
        max_objects=2,
    )
    make_ade20k(
        root / 'clean/data/toy_ade20k',
        num_train=1,
        num_val=1,
        img_size=32,
        seed=0,
    )
    return root


@pytest.mark.parametrize('config', [DET_CONFIG, SEG_CONFIG])
def test_toy_datasets_pass_and_label_loaders_are_swapped(
    config, toys, monkeypatch
):
    from mmmetaformer_tools.launch import load_config

    monkeypatch.chdir(toys / 'clean')
    cfg, scope = load_config(str(config))
    keys = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    assert warnings_logged(check_datasets, cfg, scope, keys, strict=True) == []
    loaders = [
        t
        for key in keys
        for t in cfg[key].dataset.pipeline
        if 'Annotations' in t['type']
    ]
    if scope == 'mmseg':
        # the recipe's 150 ADE20K labels, mapped to the 10 toy classes
        assert {
            (t['type'], t['num_classes'], t['ignore_index']) for t in loaders
        } == {('LoadCheckedSegAnnotations', 150, 255)}
    else:
        assert {t['type'] for t in loaders} == {'LoadAnnotations'}


def test_dropped_boxes_are_logged(toys, monkeypatch):
    from mmmetaformer_tools.launch import load_config

    monkeypatch.chdir(toys / 'clean')
    cfg, scope = load_config(str(DET_CONFIG))
    ann = toys / 'nan.json'
    coco = json.loads(
        (
            toys / 'clean/data/toy_coco/annotations/instances_train2017.json'
        ).read_text()
    )
    coco['annotations'][0]['bbox'][2] = float('nan')
    ann.write_text(json.dumps(coco))
    cfg.train_dataloader.dataset.ann_file = str(ann)
    assert warnings_logged(
        check_datasets, cfg, scope, ('train_dataloader',)
    ) == [
        f'{ann}: 1 of {len(coco["annotations"])} boxes are dropped, as mmdet '
        f'drops them; the first: annotation id 1 (image id '
        f'{coco["annotations"][0]["image_id"]}) bbox '
        f'{coco["annotations"][0]["bbox"]}: a coordinate is not a finite '
        'number. Fix them, or pass --strict-data to refuse such a file'
    ]


# -------------------------------------------------------------- the tools --


@pytest.fixture(scope='module')
def tool_runs(toys):
    """Each attack through tools/train.py or tools/test.py: the checks at
    startup, and the label loader the tools swap in (label value).

    Returns ``{case: (result, the broken file relative to its run)}``."""
    import shutil

    runs, found = {}, {}

    def copy(name):
        shutil.copytree(toys / 'clean', toys / name)
        return toys / name

    def coco_of(root, split):
        path = root / f'data/toy_coco/annotations/instances_{split}2017.json'
        return path, json.loads(path.read_text())

    root = copy('dup')
    path, coco = coco_of(root, 'val')
    coco['images'].append(dict(coco['images'][0], file_name='copy.jpg'))
    path.write_text(json.dumps(coco))
    runs['duplicate image id'] = ('test.py', [DET_CONFIG, 'no.pth'], root)
    found['duplicate image id'] = path.relative_to(root)

    root = copy('category')
    path, coco = coco_of(root, 'val')
    coco['annotations'][0]['category_id'] = 1000
    path.write_text(json.dumps(coco))
    runs['unknown category'] = ('test.py', [DET_CONFIG, 'no.pth'], root)
    found['unknown category'] = path.relative_to(root)

    root = copy('nan')
    path, coco = coco_of(root, 'train')
    coco['annotations'][0]['bbox'][0] = float('nan')
    path.write_text(json.dumps(coco))
    runs['nan box, strict'] = (
        'train.py',
        [DET_CONFIG, '--strict-data', *DET_TRAIN],
        root,
    )
    found['nan box, strict'] = path.relative_to(root)

    root = copy('value')
    path = next(root.glob('data/toy_ade20k/annotations/training/*.png'))
    label_png(path, [1, 199, 199])
    runs['label value'] = ('train.py', [SEG_CONFIG, *SEG_TRAIN], root)
    found['label value'] = path.relative_to(root)

    root = copy('bomb')
    path = next(root.glob('data/toy_ade20k/annotations/training/*.png'))
    path.write_bytes(png_declaring(60000, 60000, rows=1))
    runs['label bomb'] = ('train.py', [SEG_CONFIG, *SEG_TRAIN], root)
    found['label bomb'] = path.relative_to(root)

    # all at once: most stop within a second of starting
    started = {
        name: ForkedTool(
            script,
            *args,
            '--work-dir',
            root / 'work',
            cwd=root,
            log_path=toys / f'{name.replace(" ", "_")}.log',
        )
        for name, (script, args, root) in runs.items()
    }
    return {name: (run.wait(), found[name]) for name, run in started.items()}


@pytest.mark.parametrize(
    'case,expected',
    [
        ('duplicate image id', '{}: image id 1000001 is used twice'),
        (
            'unknown category',
            '{}: annotation id 1 (image id 1000001) has '
            'category_id 1000, which "categories" does not list',
        ),
        (
            'nan box, strict',
            '{}: annotation id 1 (image id 1) has bbox [nan, ',
        ),
        (
            'label value',
            "{}: label value 199 (2 pixels) is no class of the dataset's 150",
        ),
        ('label bomb', '{}: the PNG header declares 60000x60000'),
    ],
)
def test_tools_refuse_with_one_line(case, expected, tool_runs):
    result, path = tool_runs[case]
    assert result.returncode == 2, result.output[-3000:]
    assert 'Traceback' not in result.output, result.output[-3000:]
    lines = [
        line
        for line in result.output.splitlines()
        if line.startswith('error: ')
    ]
    assert len(lines) == 1, result.output[-3000:]
    assert lines[0].startswith('error: ' + expected.format(path)), lines[0]
