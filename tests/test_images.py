"""The one image reader: bad images end as one line naming the file.

``mmmetaformer.datasets.images`` refuses empty, undecodable, truncated,
degenerate and over-limit images (the limit read from the header before
decoding), and decodes every other image exactly as OpenCV (mmcv's default
backend) does. ``LoadCheckedImageFromFile`` brings it into the pipelines.
"""

import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from mmmetaformer.datasets import images
from mmmetaformer.datasets.images import (
    MAX_ASPECT_RATIO,
    ImageError,
    decode_image,
    read_image,
)

from .helpers import REPO_ROOT

IMAGES_MODULE = images.__file__


def picture(height=48, width=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(ext, image=None):
    ok, data = cv2.imencode(ext, picture() if image is None else image)
    assert ok
    return data.tobytes()


def png_declaring(width, height, rows=None):
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit gray pixels;
    ``rows`` of zeros compress to almost nothing (a decompression bomb)."""

    def chunk(kind, body):
        return (
            struct.pack('>I', len(body))
            + kind
            + body
            + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b'\0' * ((width + 1) * (rows or height)), 1)
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', ihdr)
        + chunk(b'IDAT', pixels)
        + chunk(b'IEND', b'')
    )


@pytest.mark.parametrize('ext', ['.png', '.jpg', '.bmp', '.webp', '.tiff'])
def test_valid_images_read_as_opencv_reads_them(ext, tmp_path):
    path = tmp_path / f'picture{ext}'
    path.write_bytes(encoded(ext))
    image = read_image(path)
    assert np.array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert np.array_equal(
        read_image(path, channel_order='rgb'), image[..., ::-1]
    )


def test_extreme_but_valid_aspect_ratio_reads(tmp_path):
    path = tmp_path / 'panorama.png'
    path.write_bytes(encoded('.png', picture(2, 2 * MAX_ASPECT_RATIO)))
    assert read_image(path).shape == (2, 2 * MAX_ASPECT_RATIO, 3)


def refusal(path, **kwargs):
    with pytest.raises(ImageError) as err:
        read_image(path, **kwargs)
    message = str(err.value)
    assert '\n' not in message and message.startswith(f'{path}: ')
    return message


@pytest.mark.parametrize(
    'case,expected',
    [
        ('empty', 'the image file is empty'),
        ('garbage', 'not a readable image'),
        ('jpeg garbage', 'not a readable image'),
        ('truncated jpeg', 'truncated JPEG'),
        ('truncated png', 'truncated PNG'),
        ('corrupt png body', 'undecodable image data'),
        ('4x4000', 'degenerate image size 4x4000'),
        ('0 wide', 'degenerate image size 0x10'),
    ],
)
def test_broken_images_are_refused_with_one_line(case, expected, tmp_path):
    png, jpg = encoded('.png'), encoded('.jpg')
    body = png.index(b'IDAT') + 8
    data = {
        'empty': b'',
        'garbage': b'<html>404 Not Found</html>',
        'jpeg garbage': b'\xff\xd8\xff\xe0 not really a jpeg',
        'truncated jpeg': jpg[: len(jpg) // 2],
        'truncated png': png[: len(png) // 2],
        'corrupt png body': png[:body] + b'\0' * 40 + png[body + 40 :],
        '4x4000': encoded('.png', np.zeros((4000, 4, 3), np.uint8)),
        '0 wide': png_declaring(0, 10),
    }[case]
    path = tmp_path / 'image.png'
    path.write_bytes(data)
    assert expected in refusal(path)


def test_missing_file_is_named(tmp_path):
    assert 'cannot read the file' in refusal(tmp_path / 'nothing.jpg')


def test_pixel_limit_is_read_from_the_header_before_decoding(tmp_path):
    """A 1 MB PNG declaring 20000x20000 pixels (400 MB decoded as gray,
    1.2 GB as color) is refused by a process whose peak memory grows far
    less than the decoded size."""
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_declaring(20000, 20000))
    assert bomb.stat().st_size < 2_000_000
    assert (
        'declares 20000x20000 = 400000000 pixels, more than '
        'max_pixels=100000000'
    ) in refusal(bomb)
    script = (
        'import importlib.util, resource\n'
        # the module alone, without the package's torch and mmengine
        'spec = importlib.util.spec_from_file_location(\n'
        f'    "images", {str(IMAGES_MODULE)!r})\n'
        'images = importlib.util.module_from_spec(spec)\n'
        'spec.loader.exec_module(images)\n'
        'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
        'try:\n'
        f'    images.read_image({str(bomb)!r})\n'
        'except images.ImageError:\n'
        '    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
        '    print(after - before)\n'
    )
    growth_kb = int(
        subprocess.run(
            [sys.executable, '-c', script],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert growth_kb < 100_000
    # the limit is configurable, in both directions
    small = tmp_path / 'small.png'
    small.write_bytes(encoded('.png'))
    assert 'more than max_pixels=1000' in refusal(small, max_pixels=1000)
    assert read_image(small, max_pixels=64 * 48).shape == (48, 64, 3)


def test_other_formats_are_checked_from_their_header_too(tmp_path):
    path = tmp_path / 'big.bmp'
    path.write_bytes(encoded('.bmp', np.zeros((100, 120, 3), np.uint8)))
    assert 'declares 120x100 = 12000 pixels' in refusal(path, max_pixels=10000)


def test_invalid_channel_order_names_the_choices(tmp_path):
    with pytest.raises(
        ValueError, match="channel_order='bgra'; valid: bgr, rgb"
    ):
        decode_image(encoded('.png'), 'x.png', channel_order='bgra')


def test_pipeline_transform_refuses_with_the_file_name(tmp_path):
    """Our tools load images with LoadCheckedImageFromFile; valid images
    load as mmcv's LoadImageFromFile loads them."""
    from mmcv.transforms import LoadImageFromFile
    from mmengine.registry import TRANSFORMS, init_default_scope

    import mmmetaformer  # noqa: F401  (registers the transform)

    good = tmp_path / 'good.jpg'
    good.write_bytes(encoded('.jpg'))
    for scope in ('mmdet', 'mmseg'):
        init_default_scope(scope)
        transform = TRANSFORMS.build(dict(type='LoadCheckedImageFromFile'))
        ours = transform(dict(img_path=str(good)))
        stock = LoadImageFromFile()(dict(img_path=str(good)))
        assert np.array_equal(ours['img'], stock['img'])
        assert ours['img_shape'] == stock['img_shape'] == (48, 64)
    bad = tmp_path / 'stick.png'
    bad.write_bytes(encoded('.png', np.zeros((4000, 4, 3), np.uint8)))
    with pytest.raises(ImageError, match=f'^{bad}: degenerate image size'):
        transform(dict(img_path=str(bad)))
    with pytest.raises(ValueError, match="color_type='color_ignore_orie"):
        TRANSFORMS.build(
            dict(
                type='LoadCheckedImageFromFile',
                color_type='color_ignore_orientation',
            )
        )


@pytest.mark.parametrize(
    'config',
    [
        'retinanet_poolformer_s12_coco.py',
        'mask_rcnn_caformer_s18_coco.py',
        'semantic_fpn_poolformer_s12_ade20k.py',
        'toy/retinanet_poolformer_s12_toy_coco.py',
    ],
)
def test_tools_swap_every_stock_image_loader(config):
    """Configs keep the stock loader, which mmdet's and mmseg's inferencers
    look up by name; tools/train.py and tools/test.py load through the
    checked one, options kept."""
    from mmmetaformer_tools.launch import (
        _dataset_cfgs,
        check_images_when_loading,
        load_config,
    )

    keys = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    cfg, _ = load_config(str(REPO_ROOT / 'configs' / config))
    loaders = [
        t
        for _, dataset in _dataset_cfgs(cfg, keys)
        for t in dataset.pipeline
        if 'Load' in t['type'] and 'Image' in t['type']
    ]
    assert loaders and {t['type'] for t in loaders} == {'LoadImageFromFile'}
    before = [dict(t) for t in loaders]
    check_images_when_loading(cfg, keys)
    for old, new in zip(before, loaders):
        assert new['type'] == 'LoadCheckedImageFromFile'
        assert {k: v for k, v in new.items() if k != 'type'} == {
            k: v for k, v in old.items() if k != 'type'
        }
