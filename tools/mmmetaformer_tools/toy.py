"""Deterministic synthetic datasets in the real COCO and ADE20K layouts,
read unchanged by mmdet's CocoDataset/CocoMetric and mmseg's
ADE20KDataset/IoUMetric. Each image has its own generator seeded from
``(seed, dataset, split, index)``: the same arguments give byte-identical
files, and image ``i`` does not depend on how many images are asked for.

COCO (``annotations/instances_{train,val}2017.json``, ``{train,val}2017/``):
the json lists all 80 categories with their real ids. Each image holds 1 to
``max_objects`` flat-coloured shapes on a muted gradient, 2 px apart or more;
the shape gives the class (``SHAPE_CATEGORY``) and stands nearly upright
(tilted by 15 degrees at most), so a class has one silhouette. Annotations
are exact: the polygon is the drawn outline, the drawn pixels are that
polygon as pycocotools rasterizes it, ``bbox`` is their tight box and
``area`` their count. Sizes: 25% to 45% of the shorter side (32 to 58 px at
the demo's 128 px, sticks 1.25x longer), the range of RetinaNet's P3/P4
anchors. Chosen for ``make demo`` on a separate split (generator seed 1):
with freely rotated shapes, thin bars and sizes of 12% to 56%, the same
600-iteration RetinaNet reached box mAP 0.29; these reach 0.54.

ADE20K (``images/{training,validation}/*.jpg``, ``annotations/.../*.png``):
outdoor or indoor scenes of 10 real classes (``ADE_LABELS``: label k is
class index k - 1); 0, ignored under ``reduce_zero_label``, marks the 2 px
seams between regions.
"""

import colorsys
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

MIN_IMG_SIZE = 32
_TAGS = {'coco': 0, 'ade20k': 1, 'train': 0, 'val': 1}

# The 80 COCO detection classes in mmdet's CocoDataset order; their ids are
# 1..90 without the ten ids COCO never used.
COCO_NAMES = tuple(
    (
        'person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic '
        'light,fire hydrant,stop sign,parking meter,bench,bird,cat,dog,horse,'
        'sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,tie,'
        'suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,'
        'baseball glove,skateboard,surfboard,tennis racket,bottle,wine glass,'
        'cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,'
        'carrot,hot dog,pizza,donut,cake,chair,couch,potted plant,bed,'
        'dining table,toilet,tv,laptop,mouse,remote,keyboard,cell phone,'
        'microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,'
        'teddy bear,hair drier,toothbrush'
    ).split(',')
)
COCO_IDS = tuple(
    i
    for i in range(1, 91)
    if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
# Supercategories cover consecutive ids: (first id, name).
_SUPERCATEGORIES = (
    (1, 'person'),
    (2, 'vehicle'),
    (10, 'outdoor'),
    (16, 'animal'),
    (27, 'accessory'),
    (34, 'sports'),
    (44, 'kitchen'),
    (52, 'food'),
    (62, 'furniture'),
    (72, 'electronic'),
    (78, 'appliance'),
    (84, 'indoor'),
)
SHAPE_CATEGORY = {
    'circle': 'sports ball',
    'rectangle': 'tv',
    'triangle': 'kite',
    'cross': 'airplane',
    'bar': 'baseball bat',
}
SHAPE_SIZES = (0.25, 0.45)  # extent / shorter image side; bars: x 1.25
MAX_TILT = 15  # degrees
# Bumped whenever the same arguments draw different COCO images, so that
# tools/demo.py remakes a set written by an older generator.
COCO_VERSION = 2

# ADE20K label values (class index + 1) of the classes in the toy scenes.
ADE_LABELS = {
    'wall': 1,
    'building': 2,
    'sky': 3,
    'floor': 4,
    'tree': 5,
    'road': 7,
    'grass': 10,
    'person': 13,
    'car': 21,
    'painting': 23,
}
# Region classes: RGB, colour jitter, blotch amplitude, per-pixel grain.
ADE_STYLES = {
    'wall': ((215, 205, 185), 20, 8, 3),
    'building': ((150, 125, 115), 25, 10, 5),
    'sky': ((120, 170, 235), 25, 25, 2),
    'floor': ((150, 100, 60), 20, 10, 6),
    'tree': ((40, 105, 40), 15, 20, 20),
    'road': ((85, 85, 90), 12, 6, 10),
    'grass': ((85, 160, 60), 15, 10, 8),
}


# --------------------------------------------------------------- shared --


def _size(img_size):
    """``(width, height)`` from an int or one or two ints (W H)."""
    sizes = [int(v) for v in np.atleast_1d(img_size)]
    if len(sizes) > 2:
        raise ValueError(
            f'img_size must be one value or two (W H), got {sizes}'
        )
    width, height = sizes if len(sizes) == 2 else sizes * 2
    if min(width, height) < MIN_IMG_SIZE:
        raise ValueError(
            f'img_size must be at least {MIN_IMG_SIZE} pixels, '
            f'got {width}x{height}'
        )
    return width, height


def _check(seed, **counts):
    for name, value in counts.items():
        if int(value) < 1:
            raise ValueError(f'{name} must be at least 1, got {value}')
    if int(seed) < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')


def _prepare(out_dir, managed, overwrite):
    """Create ``out_dir``; a non-empty one only with ``overwrite``, which
    removes just the ``managed`` sub-folders (the ones written here)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path '{out}' is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory '{out}' exists and is not empty; use "
                '--overwrite (overwrite=True) to replace the toy dataset'
            )
        for name in managed:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _rng(seed, dataset, split, index):
    return np.random.default_rng(
        [int(seed), _TAGS[dataset], _TAGS[split], int(index)]
    )


def _colour(rng, vivid):
    """RGB (float32, 0..255): vivid (saturated) or muted (greyish)."""
    saturation = rng.uniform(0.6, 1.0) if vivid else rng.uniform(0.0, 0.25)
    value = rng.uniform(0.55, 1.0) if vivid else rng.uniform(0.25, 0.85)
    return (
        np.float32(colorsys.hsv_to_rgb(rng.random(), saturation, value)) * 255
    )


def _smooth_noise(rng, height, width, cell, amplitude):
    """Low-frequency noise in [-amplitude, amplitude], shape (H, W, 1)."""
    coarse = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2))
    return (
        cv2.resize(
            coarse.astype(np.float32),
            (width, height),
            interpolation=cv2.INTER_CUBIC,
        )[..., None]
        * amplitude
    )


def _write_jpg(path, rgb):
    bgr = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)[..., ::-1]
    if not cv2.imwrite(
        str(path), np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 90]
    ):
        raise OSError(f'could not write {path}')


# ----------------------------------------------------------------- COCO --


def _rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]])


def _ellipse(rx, ry, num=40):
    t = np.linspace(0, 2 * math.pi, num, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _box(half_width, half_height):
    return [
        [-half_width, -half_height],
        [half_width, -half_height],
        [half_width, half_height],
        [-half_width, half_height],
    ]


def shape_outline(shape, size, rng):
    """One simple polygon, (N, 2), centred on 0, largest extent ~``size``.
    Every shape stands nearly upright (tilted by at most ``MAX_TILT``
    degrees), so each class keeps one silhouette; bars lie or stand."""
    tilt = math.radians(rng.uniform(-MAX_TILT, MAX_TILT))
    if shape == 'circle':
        return _ellipse(size / 2, size / 2)
    if shape == 'rectangle':  # screens: 4:3 to 16:9
        return _rotate(_box(size / 2, size * rng.uniform(0.28, 0.4)), tilt)
    if shape == 'triangle':  # pointing up (y grows downwards)
        corners = tilt - math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(corners), np.sin(corners)], 1) * size / 1.9
    if shape == 'cross':  # a plus sign: 12 corners
        a, t = size / 2, size * rng.uniform(0.16, 0.2)
        arm = [[t, t], [a, t], [a, -t], [t, -t]]
        return np.concatenate(
            [_rotate(arm, tilt + k * math.pi / 2) for k in range(4)]
        )
    if shape == 'bar':
        stick = _box(size / 2, size * rng.uniform(0.08, 0.11))
        return _rotate(stick, tilt + math.pi / 2 * int(rng.integers(2)))
    raise ValueError(
        f'unknown shape {shape!r}; valid: {", ".join(SHAPE_CATEGORY)}'
    )


def place_objects(rng, width, height, max_objects, attempts=30):
    """``[(shape, outline, mask)]``: 1..max_objects shapes inside the image,
    2 px apart or more. ``outline`` (N, 2) is in COCO coordinates (pixel i
    spans [i, i + 1]); ``mask`` (H, W) uint8, what is drawn, is the outline
    rasterized by pycocotools, exactly as COCO tools read the polygon."""
    objects, taken = [], np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(attempts):
            shape = list(SHAPE_CATEGORY)[int(rng.integers(5))]
            size = rng.uniform(*SHAPE_SIZES) * min(width, height)
            outline = shape_outline(
                shape, size * (1.25 if shape == 'bar' else 1), rng
            )
            low, high = outline.min(0), outline.max(0)
            outline = np.round(
                outline + rng.uniform(-low, np.array([width, height]) - high),
                2,
            )
            mask = mask_utils.decode(
                mask_utils.frPyObjects(
                    [outline.ravel().tolist()], height, width
                )
            )[..., 0]
            if mask.sum() >= 16 and not (mask & taken).any():
                objects.append((shape, outline, mask))
                taken |= cv2.dilate(mask, np.ones((5, 5), np.uint8))
                break
    return objects


def _coco_image(rng, width, height, objects):
    start, end = _colour(rng, False), _colour(rng, False)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = ((ramp - ramp.min()) / max(np.ptp(ramp), 1))[..., None]
    image = start + (end - start) * ramp
    image = image + _smooth_noise(rng, height, width, 24, 18)
    for _, _, mask in objects:
        image[mask.astype(bool)] = _colour(rng, True)
    return image + rng.normal(0, 4, image.shape)


def _annotation(shape, outline, mask, image_id, ann_id):
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        'id': ann_id,
        'image_id': image_id,
        'iscrowd': 0,
        'category_id': COCO_IDS[COCO_NAMES.index(SHAPE_CATEGORY[shape])],
        'segmentation': [outline.ravel().tolist()],
        'area': float(len(xs)),
        'bbox': [
            float(x0),
            float(y0),
            float(xs.max() - x0 + 1),
            float(ys.max() - y0 + 1),
        ],
    }


def make_coco(
    out_dir,
    num_train=64,
    num_val=16,
    img_size=320,
    seed=0,
    max_objects=4,
    overwrite=False,
    verbose=False,
):
    """Write a toy COCO instance dataset; return ``out_dir`` as a Path."""
    _check(seed, num_train=num_train, num_val=num_val, max_objects=max_objects)
    width, height = _size(img_size)
    out = _prepare(out_dir, ['annotations', 'train2017', 'val2017'], overwrite)
    (out / 'annotations').mkdir(exist_ok=True)
    if verbose:
        print(f'toy COCO dataset in {out}:', flush=True)
    categories = [
        {
            'id': i,
            'name': name,
            'supercategory': [
                s for first, s in _SUPERCATEGORIES if first <= i
            ][-1],
        }
        for i, name in zip(COCO_IDS, COCO_NAMES)
    ]
    for split, count in (('train', num_train), ('val', num_val)):
        (out / f'{split}2017').mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = _rng(seed, 'coco', split, index)
            image_id = _TAGS[split] * 1_000_000 + index + 1
            name = f'{image_id:012d}.jpg'
            objects = place_objects(rng, width, height, max_objects)
            _write_jpg(
                out / f'{split}2017' / name,
                _coco_image(rng, width, height, objects),
            )
            images.append(
                {
                    'id': image_id,
                    'file_name': name,
                    'width': width,
                    'height': height,
                }
            )
            annotations += [
                _annotation(*obj, image_id, len(annotations) + k + 1)
                for k, obj in enumerate(objects)
            ]
        path = out / 'annotations' / f'instances_{split}2017.json'
        path.write_text(
            json.dumps(
                {
                    'info': {
                        'description': f'mmmetaformer toy COCO, seed {seed}',
                        'version': COCO_VERSION,
                    },
                    'images': images,
                    'annotations': annotations,
                    'categories': categories,
                }
            )
        )
        if verbose:
            print(
                f'  {split}2017: {count} images, {len(annotations)} '
                f'objects -> {path}',
                flush=True,
            )
    return out


# --------------------------------------------------------------- ADE20K --


class _Scene:
    """An RGB float image and its label map, painted back to front."""

    def __init__(self, rng, width, height):
        self.rng, self.width, self.height = rng, width, height
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)

    def paint(self, mask, name, look=None):
        """Label ``mask`` as ``name``; draw the class style, an RGB colour
        (lightly textured) or an (H, W, 3) picture there."""
        look = ADE_STYLES[name] if look is None else look
        if getattr(look, 'ndim', 1) < 3:
            rgb, jitter, blotch, grain = (
                look if len(look) == 4 else (look, 10, 4, 4)
            )
            look = (
                np.float32(rgb)
                + self.rng.uniform(-jitter, jitter, 3)
                + _smooth_noise(self.rng, self.height, self.width, 24, blotch)
                + self.rng.normal(0, grain, (self.height, self.width, 1))
            )
        self.image[mask] = look[mask]
        self.labels[mask] = ADE_LABELS[name]

    def rect(self, x0, y0, x1, y1):
        return cv2.rectangle(
            np.zeros(self.labels.shape, np.uint8),
            (int(x0), int(y0)),
            (int(x1), int(y1)),
            1,
            -1,
        ).astype(bool)

    def disc(self, x, y, radius, ry=None):
        axes = (max(2, int(radius)), max(2, int(ry or radius)))
        return cv2.ellipse(
            np.zeros(self.labels.shape, np.uint8),
            (int(x), int(y)),
            axes,
            0,
            0,
            360,
            1,
            -1,
        ).astype(bool)

    def below(self, y0, amplitude):
        """Rows below a gentle wave around ``y0``."""
        xs = np.arange(self.width) / self.width
        wave = y0 + amplitude * np.sin(
            xs * self.rng.uniform(3, 9) + self.rng.uniform(0, 7)
        )
        return np.arange(self.height)[:, None] >= wave


def ade_scene(rng, width, height):
    """``(image (H, W, 3) float RGB, labels (H, W) uint8)`` of one scene."""
    s, w, h, u = _Scene(rng, width, height), width, height, rng.uniform
    count = lambda low, high: range(int(rng.integers(low, high)))  # noqa
    outdoor = rng.random() < 0.6
    ground = u(0.55, 0.75) * h if outdoor else u(0.6, 0.78) * h
    if outdoor:
        s.paint(np.ones((h, w), bool), 'sky')
        for _ in count(0, 4):
            x = u(-0.1, 0.9) * w
            s.paint(
                s.rect(
                    x, ground - u(0.2, 0.45) * h, x + u(0.12, 0.3) * w, ground
                ),
                'building',
            )
        lawn = rng.random() < 0.5
        s.paint(s.below(ground, u(0, 0.03) * h), 'grass' if lawn else 'road')
        if lawn and rng.random() < 0.5:  # a road across the lawn
            top = u(ground + 0.05 * h, 0.9 * h)
            s.paint(
                s.below(top, 0.02 * h) & ~s.below(top + u(0.1, 0.2) * h, 0),
                'road',
            )
        for _ in count(1, 4):  # trees: trunk and a canopy of discs
            x, r = u(0.05, 0.95) * w, u(0.06, 0.11) * h
            top = ground - r * u(0.8, 1.5)
            s.paint(
                s.rect(x - 0.15 * r, top, x + 0.15 * r, ground),
                'tree',
                (95, 65, 40),
            )
            s.paint(
                np.any(
                    [
                        s.disc(x + dx * r, top - (0.7 - dy) * r, r * u(0.6, 1))
                        for dx, dy in u(
                            -0.8, 0.8, (int(rng.integers(3, 6)), 2)
                        )
                    ],
                    0,
                ),
                'tree',
            )
        for _ in count(0, 3):  # cars: body and cabin, dark wheels
            x, length = u(-0.05, 0.85) * w, u(0.18, 0.3) * w
            y = u(ground + 0.12 * h, h) - 0.1 * length
            s.paint(
                s.rect(x, y - 0.3 * length, x + length, y)
                | s.rect(
                    x + 0.2 * length, y - 0.55 * length, x + 0.75 * length, y
                ),
                'car',
                _colour(rng, True),
            )
            s.paint(
                s.disc(x + 0.22 * length, y, 0.1 * length)
                | s.disc(x + 0.78 * length, y, 0.1 * length),
                'car',
                (25, 25, 25),
            )
    else:
        s.paint(np.ones((h, w), bool), 'wall')
        tilt = u(-0.05, 0.05) * h * (2 * np.arange(w) / w - 1)
        s.paint(np.arange(h)[:, None] >= ground + tilt, 'floor')
        for _ in count(1, 3):  # paintings: blocks of colour
            x, y, half = (
                u(0.15, 0.85) * w,
                u(0.2, 0.5) * ground,
                u(0.08, 0.15) * w,
            )
            art = cv2.resize(
                u(0, 255, (4, 4, 3)).astype(np.float32),
                (w, h),
                interpolation=cv2.INTER_NEAREST,
            )
            tall = half * u(0.6, 1.2)
            s.paint(
                s.rect(x - half, y - tall, x + half, y + tall), 'painting', art
            )
    for _ in count(0, 3):  # people: body and head
        x, y, tall = (
            u(0.05, 0.95) * w,
            u(ground + 0.05 * h, h),
            u(0.2, 0.35) * h,
        )
        s.paint(
            s.disc(x, y - 0.4 * tall, tall * u(0.13, 0.18), 0.4 * tall),
            'person',
            _colour(rng, True),
        )
        s.paint(
            s.disc(x, y - 0.89 * tall, 0.11 * tall), 'person', (225, 185, 150)
        )
    kernel = np.ones((3, 3), np.uint8)  # 2 px seams between regions: 0
    labels = s.labels
    labels[cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)] = 0
    return s.image + rng.normal(0, 3, s.image.shape), labels


def make_ade20k(
    out_dir,
    num_train=64,
    num_val=16,
    img_size=256,
    seed=0,
    overwrite=False,
    verbose=False,
):
    """Write a toy ADE20K semantic segmentation set; return ``out_dir``."""
    _check(seed, num_train=num_train, num_val=num_val)
    width, height = _size(img_size)
    out = _prepare(out_dir, ['images', 'annotations'], overwrite)
    if verbose:
        print(f'toy ADE20K dataset in {out}:', flush=True)
    for split, count in (('train', num_train), ('val', num_val)):
        folder = {'train': 'training', 'val': 'validation'}[split]
        for sub in ('images', 'annotations'):
            (out / sub / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = ade_scene(
                _rng(seed, 'ade20k', split, index), width, height
            )
            stem = f'ADE_{split}_{index + 1:08d}'
            _write_jpg(out / 'images' / folder / f'{stem}.jpg', image)
            if not cv2.imwrite(
                str(out / 'annotations' / folder / f'{stem}.png'), labels
            ):
                raise OSError(f'could not write the label map of {stem}')
        if verbose:
            print(f'  {folder}: {count} images and label maps', flush=True)
    return out
