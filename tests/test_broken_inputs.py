"""Broken files give one clear error line, never a traceback or numbers.

Each case: the tool exits with status 2 and one ``error:`` line naming the
file and what is wrong. Cases: a truncated or damaged checkpoint, an
annotation JSON that does not parse, an image listed in the annotations but
missing on disk, an image and a label map that do not decode, an empty
image, and a decompression bomb (refused from its header).
"""

import shutil

from mmmetaformer_tools.toy import make_ade20k, make_coco

import pytest
import torch

import mmmetaformer  # noqa: F401
from mmmetaformer.checkpoint import CorruptCheckpointError, read_checkpoint
from mmmetaformer.registry import MODELS

from .forked_tools import ForkedTool
from .helpers import tiny_config
from .test_images import png_declaring

DET_SMALL = ['test_dataloader.dataset.pipeline.1.scale=(64,64)']
SEG_SMALL = [
    'train_dataloader.batch_size=1',
    'train_cfg.max_iters=1',
    'train_cfg.val_interval=10',
]


@pytest.mark.parametrize(
    'damage',
    ['truncated zip', 'truncated legacy', 'not a checkpoint', 'empty'],
)
def test_damaged_checkpoints_are_named_and_explained(damage, tmp_path):
    path = tmp_path / 'model.pth'
    state = {'state_dict': {'w': torch.randn(1000)}}
    torch.save(
        state,
        path,
        _use_new_zipfile_serialization=damage != 'truncated legacy',
    )
    data = path.read_bytes()
    path.write_bytes(
        {'not a checkpoint': b'<html>404 Not Found</html>', 'empty': b''}.get(
            damage, data[: len(data) // 2]
        )
    )
    with pytest.raises(CorruptCheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message
    assert (
        'not a PyTorch checkpoint' in message
        if damage in ('not a checkpoint', 'empty')
        else 'truncated or damaged' in message
    ), message


def copy_toy(source, cwd, name):
    shutil.copytree(source / 'data', cwd / name / 'data')
    return cwd / name


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    """Run every broken case through a tool (two at a time).

    Returns ``{case: result}`` and ``{case: the broken file}``, the latter
    relative to the run's directory, as the datasets name their files.
    """
    cwd = tmp_path_factory.mktemp('broken')
    clean = cwd / 'clean'
    make_coco(
        clean / 'data' / 'toy_coco',
        num_train=1,
        num_val=2,
        img_size=64,
        seed=0,
        max_objects=2,
    )
    make_ade20k(
        clean / 'data' / 'toy_ade20k',
        num_train=1,
        num_val=1,
        img_size=64,
        seed=0,
    )
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    # the toy RetinaNet and Semantic FPN with a tiny backbone and heads:
    # the broken files, not the model's size, are the subject
    det_config = tiny_config(cwd, 'retinanet')
    seg_config = tiny_config(cwd, 'semantic_fpn')
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(det_config).model)
    checkpoint = cwd / 'retinanet.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    truncated = cwd / 'truncated.pth'
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    found = {}
    json_root = copy_toy(clean, cwd, 'json')
    ann = json_root / 'data/toy_coco/annotations/instances_val2017.json'
    ann.write_text(ann.read_text()[:200])
    found['json'] = ann.relative_to(json_root)
    missing_root = copy_toy(clean, cwd, 'missing')
    image = sorted(missing_root.glob('data/toy_coco/val2017/*.jpg'))[-1]
    image.unlink()
    found['missing'] = image.relative_to(missing_root)
    corrupt_root = copy_toy(clean, cwd, 'corrupt')
    image = sorted(corrupt_root.glob('data/toy_coco/val2017/*.jpg'))[-1]
    image.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    found['corrupt'] = image.relative_to(corrupt_root)
    empty_root = copy_toy(clean, cwd, 'empty')
    image = sorted(empty_root.glob('data/toy_coco/val2017/*.jpg'))[-1]
    image.write_bytes(b'')
    found['empty'] = image.relative_to(empty_root)
    bomb_root = copy_toy(clean, cwd, 'bomb')
    image = sorted(bomb_root.glob('data/toy_coco/val2017/*.jpg'))[-1]
    image.write_bytes(png_declaring(20000, 20000, rows=1))
    found['bomb'] = image.relative_to(bomb_root)
    label_root = copy_toy(clean, cwd, 'label')
    label = next(label_root.glob('data/toy_ade20k/annotations/training/*.png'))
    label.write_bytes(b'GIF89a garbage')
    found['label'] = label.relative_to(label_root)

    def test(root, ckpt):
        return (
            'test.py',
            [
                det_config,
                ckpt,
                '--work-dir',
                root / 'work',
                '--cfg-options',
                *DET_SMALL,
            ],
            root,
        )

    runs = dict(
        truncated=test(clean, truncated),
        json=test(json_root, checkpoint),
        missing=test(missing_root, checkpoint),
        corrupt=test(corrupt_root, checkpoint),
        empty=test(empty_root, checkpoint),
        bomb=test(bomb_root, checkpoint),
        label=(
            'train.py',
            [
                seg_config,
                '--work-dir',
                label_root / 'work',
                '--cfg-options',
                *SEG_SMALL,
            ],
            label_root,
        ),
    )
    results, items = {}, list(runs.items())
    for i in range(0, len(items), 2):
        started = [
            (
                name,
                ForkedTool(
                    script, *args, cwd=root, log_path=cwd / f'{name}.log'
                ),
            )
            for name, (script, args, root) in items[i : i + 2]
        ]
        for name, run in started:
            results[name] = run.wait()
    checkpoint.unlink()  # read by the runs
    found['truncated'] = truncated
    return results, found


def error_line(result):
    assert result.returncode == 2, result.output[-3000:]
    assert 'Traceback' not in result.output, result.output[-3000:]
    assert 'coco/bbox_mAP' not in result.output
    lines = [
        line
        for line in result.output.splitlines()
        if line.startswith('error: ')
    ]
    assert len(lines) == 1, result.output[-3000:]
    return lines[0]


def test_truncated_checkpoint(cases):
    results, found = cases
    line = error_line(results['truncated'])
    assert line.startswith(
        f'error: {found["truncated"]} is not a readable '
        'checkpoint: the zip data is truncated or damaged'
    )


def test_annotation_json_that_does_not_parse(cases):
    results, found = cases
    line = error_line(results['json'])
    assert line.startswith(
        f'error: test_dataloader: annotation file '
        f'{found["json"]} is not valid JSON ('
    )
    assert 'line 1 column' in line


def test_image_listed_but_missing_on_disk(cases):
    results, found = cases
    line = error_line(results['missing'])
    assert line == (
        f'error: {found["missing"]}: the image does not exist '
        '(the dataset lists it)'
    )


def test_corrupt_image(cases):
    results, found = cases
    line = error_line(results['corrupt'])
    assert line.startswith(
        f'error: {found["corrupt"]}: not a readable '
        'image (no JPEG header giving its size'
    )


def test_empty_image(cases):
    results, found = cases
    line = error_line(results['empty'])
    assert line == f'error: {found["empty"]}: the image file is empty'


def test_decompression_bomb_is_refused_before_decoding(cases):
    results, found = cases
    line = error_line(results['bomb'])
    assert line.startswith(
        f'error: {found["bomb"]}: the PNG header declares '
        '20000x20000 = 400000000 pixels, more than '
        'max_pixels=100000000; not decoded'
    )


def test_corrupt_label_map(cases):
    results, found = cases
    line = error_line(results['label'])
    assert line.startswith(
        f'error: cannot decode label map {found["label"]}: it is corrupt'
    )
