"""Generate small synthetic datasets in the real COCO and ADE20K layouts.

The output can be read by the stock mmdet ``CocoDataset`` / ``CocoMetric`` and
mmseg ``ADE20KDataset`` / ``IoUMetric`` without any custom code, which makes it
suitable for smoke tests and short CPU training runs. Generation is
deterministic: the same arguments produce byte-identical files. Every image
has its own random generator seeded from ``(seed, dataset, split, index)``, so
image ``i`` of a split does not depend on how many images are requested.

Usage::

    python tools/misc/make_toy_dataset.py coco OUT_DIR [--num-train 64]
        [--num-val 16] [--img-size 320 | --img-size W H] [--seed 0]
        [--max-objects 4] [--overwrite]
    python tools/misc/make_toy_dataset.py ade20k OUT_DIR [--num-train 64]
        [--num-val 16] [--img-size 256 | --img-size W H] [--seed 0]
        [--overwrite]

COCO layout (``data_root=OUT_DIR`` in an mmdet config)::

    OUT_DIR/annotations/instances_train2017.json
    OUT_DIR/annotations/instances_val2017.json
    OUT_DIR/train2017/000000000001.jpg ...
    OUT_DIR/val2017/000001000001.jpg ...

The json files carry all 80 real COCO categories with their real ids (1..90
with gaps), so configs with ``num_classes=80`` work unchanged. Images show one
to ``max_objects`` flat-coloured shapes on a gradient/noise background; the
shape, not the colour, identifies the class:

    ============================  ==============  ===========
    shape                         COCO category   category id
    ============================  ==============  ===========
    circle                        sports ball     37
    rectangle (4:3 to 16:9)       tv              72
    triangle                      kite            38
    plus-shaped cross             airplane        5
    long thin ellipse ("bar")     baseball bat    39
    ============================  ==============  ===========

Shapes are drawn in order, later ones occluding earlier ones. Placement is
rejected when it would hide more than a quarter of an earlier object, leave it
with a hole or a sliver, or make it smaller than 1% of the image, so every
annotation's ``segmentation`` polygons (outer contours of the visible mask),
``bbox`` (tight around the visible mask) and ``area`` (visible pixel count)
describe what is actually visible.

ADE20K layout (``data_root=OUT_DIR`` in an mmseg config)::

    OUT_DIR/images/training/ADE_train_00000001.jpg ...
    OUT_DIR/images/validation/ADE_val_00000001.jpg ...
    OUT_DIR/annotations/training/ADE_train_00000001.png ...
    OUT_DIR/annotations/validation/ADE_val_00000001.png ...

Label maps are single-channel uint8 pngs with the ADE20K convention: 0 means
"other" (it becomes 255, ignored, under ``reduce_zero_label=True``) and label
``k`` in 1..150 is class index ``k - 1``. Scenes are outdoor (sky, buildings,
trees, grass or road, cars, people) or indoor (wall, floor, paintings, people);
each class has its own colour and texture. Thin borders between regions and
the occasional unlabelled clutter blob are left at 0. Classes used:

    =========  =====  ===========
    class      label  class index
    =========  =====  ===========
    wall       1      0
    building   2      1
    sky        3      2
    floor      4      3
    tree       5      4
    road       7      6
    grass      10     9
    person     13     12
    car        21     20
    painting   23     22
    =========  =====  ===========
"""
import argparse
import colorsys
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

ImgSize = Union[int, Sequence[int]]

MIN_IMG_SIZE = 32
JPEG_QUALITY = 90
DATASET_TAGS = {'coco': 0, 'ade20k': 1}
SPLIT_TAGS = {'train': 0, 'val': 1}

# --------------------------------------------------------------------------
# Shared helpers: arguments, output folders, randomness, colours, writing.
# --------------------------------------------------------------------------


def to_width_height(img_size: ImgSize) -> Tuple[int, int]:
    """Return ``(width, height)`` from an int or a ``(width, height)`` pair."""
    if isinstance(img_size, (int, np.integer)):
        width = height = int(img_size)
    else:
        sizes = [int(v) for v in img_size]
        if len(sizes) == 1:
            sizes = sizes * 2
        if len(sizes) != 2:
            raise ValueError(
                f'img_size must be one value or two (W H), got {img_size!r}')
        width, height = sizes
    if min(width, height) < MIN_IMG_SIZE:
        raise ValueError(f'img_size must be at least {MIN_IMG_SIZE} pixels, '
                         f'got {width}x{height}')
    return width, height


def check_counts(**counts: int) -> None:
    """Raise ``ValueError`` naming the first count that is below 1."""
    for name, value in counts.items():
        if int(value) < 1:
            raise ValueError(f'{name} must be at least 1, got {value}')


def check_seed(seed: int) -> None:
    if int(seed) < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')


def prepare_out_dir(out_dir: Union[str, Path], managed: Sequence[str],
                    overwrite: bool) -> Path:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite``.

    With ``overwrite`` only the ``managed`` sub-folders (the ones this script
    writes) are removed, anything else in ``out_dir`` is left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path '{out}' exists and is not a "
                              'directory')
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory '{out}' exists and is not empty; use "
                '--overwrite (overwrite=True) to replace the toy dataset')
        for name in managed:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def image_rng(seed: int, dataset: str, split: str,
              index: int) -> np.random.Generator:
    """Independent generator for one image of one split."""
    return np.random.default_rng(
        [int(seed), DATASET_TAGS[dataset], SPLIT_TAGS[split], int(index)])


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB colour in 0..255 (float32) from HSV components in 0..1."""
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value),
                    np.float32) * 255


def vivid_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_colour(rng.random(), rng.uniform(0.6, 1.0),
                      rng.uniform(0.55, 1.0))


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_colour(rng.random(), rng.uniform(0.0, 0.25),
                      rng.uniform(0.25, 0.85))


def smooth_noise(rng: np.random.Generator, height: int, width: int,
                 cell: int, amplitude: float) -> np.ndarray:
    """Low-frequency noise in ``[-amplitude, amplitude]``, shape (H, W)."""
    coarse = rng.uniform(-1, 1, (max(2, height // cell + 2),
                                 max(2, width // cell + 2)))
    coarse = coarse.astype(np.float32)
    return cv2.resize(coarse, (width, height),
                      interpolation=cv2.INTER_CUBIC) * amplitude


def linear_ramp(rng: np.random.Generator, height: int,
                width: int) -> np.ndarray:
    """Values in 0..1 increasing along a random direction, shape (H, W)."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    return (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_rgb_jpg(path: Path, image_rgb: np.ndarray) -> None:
    bgr = np.ascontiguousarray(to_uint8(image_rgb)[..., ::-1])
    if not cv2.imwrite(str(path), bgr,
                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f'could not write {path}')


def write_label_png(path: Path, labels: np.ndarray) -> None:
    if not cv2.imwrite(str(path), labels.astype(np.uint8)):
        raise OSError(f'could not write {path}')


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, separators=(',', ':')))


# --------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------

# (id, name, supercategory): the 80 COCO 2017 detection categories, in the
# order of mmdet's CocoDataset METAINFO['classes'].
COCO_CATEGORIES = (
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'),
    (3, 'car', 'vehicle'), (4, 'motorcycle', 'vehicle'),
    (5, 'airplane', 'vehicle'), (6, 'bus', 'vehicle'),
    (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'), (9, 'boat', 'vehicle'),
    (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'),
    (13, 'stop sign', 'outdoor'), (14, 'parking meter', 'outdoor'),
    (15, 'bench', 'outdoor'), (16, 'bird', 'animal'), (17, 'cat', 'animal'),
    (18, 'dog', 'animal'), (19, 'horse', 'animal'), (20, 'sheep', 'animal'),
    (21, 'cow', 'animal'), (22, 'elephant', 'animal'), (23, 'bear', 'animal'),
    (24, 'zebra', 'animal'), (25, 'giraffe', 'animal'),
    (27, 'backpack', 'accessory'), (28, 'umbrella', 'accessory'),
    (31, 'handbag', 'accessory'), (32, 'tie', 'accessory'),
    (33, 'suitcase', 'accessory'), (34, 'frisbee', 'sports'),
    (35, 'skis', 'sports'), (36, 'snowboard', 'sports'),
    (37, 'sports ball', 'sports'), (38, 'kite', 'sports'),
    (39, 'baseball bat', 'sports'), (40, 'baseball glove', 'sports'),
    (41, 'skateboard', 'sports'), (42, 'surfboard', 'sports'),
    (43, 'tennis racket', 'sports'), (44, 'bottle', 'kitchen'),
    (46, 'wine glass', 'kitchen'), (47, 'cup', 'kitchen'),
    (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'),
    (50, 'spoon', 'kitchen'), (51, 'bowl', 'kitchen'),
    (52, 'banana', 'food'), (53, 'apple', 'food'), (54, 'sandwich', 'food'),
    (55, 'orange', 'food'), (56, 'broccoli', 'food'), (57, 'carrot', 'food'),
    (58, 'hot dog', 'food'), (59, 'pizza', 'food'), (60, 'donut', 'food'),
    (61, 'cake', 'food'), (62, 'chair', 'furniture'),
    (63, 'couch', 'furniture'), (64, 'potted plant', 'furniture'),
    (65, 'bed', 'furniture'), (67, 'dining table', 'furniture'),
    (70, 'toilet', 'furniture'), (72, 'tv', 'electronic'),
    (73, 'laptop', 'electronic'), (74, 'mouse', 'electronic'),
    (75, 'remote', 'electronic'), (76, 'keyboard', 'electronic'),
    (77, 'cell phone', 'electronic'), (78, 'microwave', 'appliance'),
    (79, 'oven', 'appliance'), (80, 'toaster', 'appliance'),
    (81, 'sink', 'appliance'), (82, 'refrigerator', 'appliance'),
    (84, 'book', 'indoor'), (85, 'clock', 'indoor'), (86, 'vase', 'indoor'),
    (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'),
    (89, 'hair drier', 'indoor'), (90, 'toothbrush', 'indoor'),
)
COCO_CATEGORY_IDS = {name: cat_id for cat_id, name, _ in COCO_CATEGORIES}

# Shape drawn for each category that appears in the toy images.
SHAPE_TO_CATEGORY = {
    'circle': 'sports ball',
    'rectangle': 'tv',
    'triangle': 'kite',
    'cross': 'airplane',
    'bar': 'baseball bat',
}
SHAPES = tuple(SHAPE_TO_CATEGORY)

COCO_SPLIT_DIRS = {'train': 'train2017', 'val': 'val2017'}
COCO_IMAGE_ID_OFFSET = {'train': 0, 'val': 1_000_000}
MAX_OCCLUDED_FRACTION = 0.25  # of an object's own area
MIN_OBJECT_FRACTION = 0.01  # of the image area
MIN_PART_AREA = 20.0  # px, area of each polygon of a visible mask
PLACEMENT_ATTEMPTS = 30


@dataclass
class ToyObject:
    shape: str
    mask: np.ndarray  # full (unoccluded) bool mask, shape (H, W)


def regular_polygon(radius_x: float, radius_y: float, angle: float,
                    num_points: int = 48) -> np.ndarray:
    """Vertices of an ellipse rotated by ``angle``, centred on the origin."""
    t = np.linspace(0, 2 * math.pi, num_points, endpoint=False)
    points = np.stack([radius_x * np.cos(t), radius_y * np.sin(t)], axis=1)
    return rotate(points, angle)


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def box_polygon(width: float, height: float, angle: float) -> np.ndarray:
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    return rotate(half * [width / 2, height / 2], angle)


def shape_polygons(shape: str, size: float,
                   rng: np.random.Generator) -> List[np.ndarray]:
    """Polygons (centred on the origin) whose union draws ``shape``.

    ``size`` is roughly the shape's largest extent in pixels.
    """
    angle = rng.uniform(0, 2 * math.pi)
    if shape == 'circle':
        return [regular_polygon(size / 2, size / 2, 0.0)]
    if shape == 'rectangle':
        tilt = math.radians(rng.uniform(-12, 12))
        return [box_polygon(size, size * rng.uniform(0.55, 0.8), tilt)]
    if shape == 'triangle':
        corners = angle + np.arange(3) * 2 * math.pi / 3
        corners += np.radians(rng.uniform(-8, 8, 3))
        radii = size / math.sqrt(3) * rng.uniform(0.9, 1.0, 3)
        return [np.stack([radii * np.cos(corners),
                          radii * np.sin(corners)], axis=1)]
    if shape == 'cross':
        thickness = size * rng.uniform(0.22, 0.3)
        return [box_polygon(size, thickness, angle),
                box_polygon(thickness, size, angle)]
    if shape == 'bar':
        return [regular_polygon(size / 2, size * rng.uniform(0.1, 0.14),
                                angle)]
    raise ValueError(f'unknown shape {shape!r}')


def shape_size_range(shape: str) -> Tuple[float, float]:
    """Largest extent of a shape as a fraction of the shorter image side."""
    return (0.3, 0.5) if shape == 'bar' else (0.15, 0.45)


def rasterize(polygons: List[np.ndarray], width: int,
              height: int) -> np.ndarray:
    """Bool mask of the union of ``polygons`` (sub-pixel vertex precision)."""
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:  # one call each: fillPoly would XOR overlaps
        fixed_point = np.rint(polygon * 16).astype(np.int32)
        cv2.fillPoly(mask, [fixed_point], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def random_shape_mask(shape: str, rng: np.random.Generator, width: int,
                      height: int) -> np.ndarray:
    """Mask of ``shape`` at a random size and position, fully inside."""
    low, high = shape_size_range(shape)
    size = rng.uniform(low, high) * min(width, height)
    polygons = shape_polygons(shape, size, rng)
    corners = np.concatenate(polygons)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = rng.uniform(-lo, [width - 1, height - 1] - hi)
    return rasterize([p + centre for p in polygons], width, height)


def mask_polygons(mask: np.ndarray) -> List[np.ndarray]:
    """Outer contours of a bool mask, each an (N, 1, 2) int32 array."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def is_polygon_friendly(mask: np.ndarray) -> bool:
    """True when the outer contours describe ``mask`` well.

    Rejects holes (polygons cannot express them) and slivers or specks
    (degenerate polygons with hardly any area).
    """
    contours = mask_polygons(mask)
    if not contours:
        return False
    if any(len(c) < 3 or cv2.contourArea(c) < MIN_PART_AREA
           for c in contours):
        return False
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return bool(np.array_equal(filled.astype(bool), mask))


def can_add(candidate: np.ndarray, placed: List[ToyObject],
            visible: List[np.ndarray], min_area: float) -> bool:
    """Whether ``candidate`` (drawn on top) keeps every object annotatable."""
    if candidate.sum() < min_area or not is_polygon_friendly(candidate):
        return False
    for obj, seen in zip(placed, visible):
        if not (seen & candidate).any():
            continue
        still_seen = seen & ~candidate
        area = still_seen.sum()
        if (area < (1 - MAX_OCCLUDED_FRACTION) * obj.mask.sum()
                or area < min_area or not is_polygon_friendly(still_seen)):
            return False
    return True


def place_objects(rng: np.random.Generator, width: int, height: int,
                  max_objects: int) -> List[ToyObject]:
    """Pick 1..max_objects shapes, in drawing order (last on top)."""
    min_area = MIN_OBJECT_FRACTION * width * height
    placed: List[ToyObject] = []
    visible: List[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(PLACEMENT_ATTEMPTS):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            mask = random_shape_mask(shape, rng, width, height)
            if can_add(mask, placed, visible, min_area):
                visible = [seen & ~mask for seen in visible] + [mask]
                placed.append(ToyObject(shape, mask))
                break
    return placed


def visible_masks(objects: List[ToyObject]) -> List[np.ndarray]:
    """What remains of each object after the later ones are drawn."""
    result = []
    covered = np.zeros_like(objects[0].mask) if objects else None
    for obj in reversed(objects):
        result.append(obj.mask & ~covered)
        covered = covered | obj.mask
    return result[::-1]


def coco_background(rng: np.random.Generator, width: int,
                    height: int) -> np.ndarray:
    """Two-colour gradient with blotchy noise and a few faint strokes."""
    start, end = muted_colour(rng), muted_colour(rng)
    ramp = linear_ramp(rng, height, width)[..., None]
    image = start + (end - start) * ramp
    image += smooth_noise(rng, height, width, 24, 18)[..., None]
    for _ in range(int(rng.integers(0, 4))):  # faint open strokes
        points = rng.uniform([0, 0], [width, height], (3, 2))
        stroke = (start + end) / 2 + rng.uniform(-40, 40, 3)
        cv2.polylines(image, [np.rint(points).astype(np.int32)], False,
                      stroke.tolist(), 1, cv2.LINE_AA)
    return image.astype(np.float32)


def paint_shaded(image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> None:
    """Fill ``mask`` with a random vivid colour and a soft linear shading."""
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * math.pi)
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    proj = (proj - proj.mean()) / max(float(np.ptp(proj)), 1.0)
    shade = rng.uniform(20, 50) * proj
    image[ys, xs] = vivid_colour(rng) + shade[:, None]


def render_coco_image(rng: np.random.Generator, width: int, height: int,
                      objects: List[ToyObject]) -> np.ndarray:
    image = coco_background(rng, width, height)
    for obj in objects:
        paint_shaded(image, obj.mask, rng)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return image


def coco_annotation(mask: np.ndarray, category_id: int, image_id: int,
                    ann_id: int) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    # Contours run through boundary pixel indices; pixel i spans [i, i + 1]
    # in COCO coordinates, so shift the vertices onto the pixel centres.
    polygons = [(c.reshape(-1) + 0.5).tolist() for c in mask_polygons(mask)]
    return {
        'id': ann_id,
        'image_id': image_id,
        'category_id': category_id,
        'segmentation': polygons,
        'area': float(len(xs)),
        'bbox': [float(v) for v in bbox],
        'iscrowd': 0,
    }


def coco_header(seed: int) -> dict:
    return {
        'info': {
            'description': 'mmmetaformer toy COCO-format dataset '
                           f'(synthetic shapes, seed {seed})',
            'url': '',
            'version': '1.0',
            'year': 2017,
            'contributor': 'tools/misc/make_toy_dataset.py',
            'date_created': '2017/09/01',
        },
        'licenses': [{'id': 1, 'name': 'synthetic, no restrictions',
                      'url': ''}],
    }


def make_coco_split(out: Path, split: str, num_images: int,
                    size: Tuple[int, int], seed: int,
                    max_objects: int) -> dict:
    """Write one split's images and return its annotation json content."""
    width, height = size
    image_dir = out / COCO_SPLIT_DIRS[split]
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = image_rng(seed, 'coco', split, index)
        image_id = COCO_IMAGE_ID_OFFSET[split] + index + 1
        file_name = f'{image_id:012d}.jpg'
        objects = place_objects(rng, width, height, max_objects)
        write_rgb_jpg(image_dir / file_name,
                      render_coco_image(rng, width, height, objects))
        images.append({'id': image_id, 'file_name': file_name,
                       'width': width, 'height': height, 'license': 1})
        for obj, mask in zip(objects, visible_masks(objects)):
            category_id = COCO_CATEGORY_IDS[SHAPE_TO_CATEGORY[obj.shape]]
            annotations.append(coco_annotation(
                mask, category_id, image_id, len(annotations) + 1))
    content = coco_header(seed)
    content['images'] = images
    content['annotations'] = annotations
    content['categories'] = [
        {'id': cat_id, 'name': name, 'supercategory': parent}
        for cat_id, name, parent in COCO_CATEGORIES]
    return content


def make_coco(out_dir: Union[str, Path], num_train: int = 64,
              num_val: int = 16, img_size: ImgSize = 320, seed: int = 0,
              max_objects: int = 4, overwrite: bool = False,
              verbose: bool = False) -> Path:
    """Write a toy COCO detection/instance dataset; return ``out_dir``."""
    check_counts(num_train=num_train, num_val=num_val,
                 max_objects=max_objects)
    check_seed(seed)
    size = to_width_height(img_size)
    out = prepare_out_dir(out_dir, ['annotations', *COCO_SPLIT_DIRS.values()],
                          overwrite)
    (out / 'annotations').mkdir(exist_ok=True)
    if verbose:
        print(f'toy COCO dataset in {out}:')
    for split, count in (('train', num_train), ('val', num_val)):
        content = make_coco_split(out, split, count, size, seed, max_objects)
        json_path = out / 'annotations' / f'instances_{split}2017.json'
        write_json(json_path, content)
        if verbose:
            print(f'  {COCO_SPLIT_DIRS[split]}: {len(content["images"])} '
                  f'images, {len(content["annotations"])} annotations '
                  f'-> {json_path}')
    return out


# --------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------

# ADE20K label values (class index + 1) of the classes in the toy scenes.
ADE_LABELS = {
    'wall': 1, 'building': 2, 'sky': 3, 'floor': 4, 'tree': 5, 'road': 7,
    'grass': 10, 'person': 13, 'car': 21, 'painting': 23,
}
IGNORE_LABEL = 0
ADE_SPLIT_DIRS = {'train': 'training', 'val': 'validation'}
ADE_FILE_PREFIX = {'train': 'ADE_train', 'val': 'ADE_val'}


class Scene:
    """An RGB float image and its label map, painted back to front."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng = rng
        self.width = width
        self.height = height
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def blank_mask(self) -> np.ndarray:
        return np.zeros((self.height, self.width), np.uint8)

    def paint(self, mask: np.ndarray, texture: np.ndarray,
              label: int) -> None:
        """Paint ``texture`` (H, W, 3) where ``mask`` is set; set labels."""
        where = mask.astype(bool)
        self.image[where] = texture[where]
        self.labels[where] = label

    def paint_class(self, mask: np.ndarray, name: str) -> None:
        self.paint(mask, REGION_TEXTURES[name](self), ADE_LABELS[name])

    def below_curve(self, y0: float, amplitude: float) -> np.ndarray:
        """Mask of rows below a gentle sine curve around ``y0``."""
        wavelength = self.rng.uniform(0.5, 1.5) * self.width
        phase = self.rng.uniform(0, 2 * math.pi)
        xs = np.arange(self.width)
        curve = y0 + amplitude * np.sin(2 * math.pi * xs / wavelength + phase)
        return np.arange(self.height)[:, None] >= curve[None, :]


# ----- region textures: each class gets its own colour and pattern ----------

def jittered(rng: np.random.Generator, rgb: Sequence[float],
             amount: float) -> np.ndarray:
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3)


def flat_texture(scene: Scene, rgb: Sequence[float], jitter: float,
                 blotch: float, grain: float) -> np.ndarray:
    """Colour + low-frequency blotches + per-pixel grain."""
    rng, h, w = scene.rng, scene.height, scene.width
    texture = np.broadcast_to(jittered(rng, rgb, jitter), (h, w, 3)).copy()
    texture += smooth_noise(rng, h, w, 24, blotch)[..., None]
    texture += rng.normal(0, grain, (h, w, 1)).astype(np.float32)
    return texture


def sky_texture(scene: Scene) -> np.ndarray:
    rng, h, w = scene.rng, scene.height, scene.width
    top = jittered(rng, (70, 130, 225), 20)
    bottom = jittered(rng, (175, 205, 240), 15)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    texture = np.broadcast_to(top + (bottom - top) * ramp, (h, w, 3)).copy()
    clouds = np.clip(smooth_noise(rng, h, w, 40, 90), 0, None)
    return texture + clouds[..., None]


def building_texture(scene: Scene) -> np.ndarray:
    rng, h, w = scene.rng, scene.height, scene.width
    texture = flat_texture(scene, (150, 125, 115), 25, 8, 4)
    period = int(rng.integers(12, 22))
    ys, xs = np.mgrid[0:h, 0:w]
    windows = ((ys % period) < period // 2) & ((xs % period) < period // 2)
    texture[windows] = jittered(rng, (60, 70, 95), 10)
    return texture


def wall_texture(scene: Scene) -> np.ndarray:
    return flat_texture(scene, (215, 205, 185), 20, 8, 3)


def floor_texture(scene: Scene) -> np.ndarray:
    rng, h, w = scene.rng, scene.height, scene.width
    texture = flat_texture(scene, (150, 100, 60), 20, 6, 5)
    period = rng.uniform(8, 16)
    waviness = smooth_noise(rng, h, w, 32, 2.0)
    rows = np.arange(h, dtype=np.float32)[:, None]
    planks = np.sin(2 * math.pi * rows / period + waviness)
    return texture + 18 * planks[..., None]


def tree_texture(scene: Scene) -> np.ndarray:
    return flat_texture(scene, (40, 105, 40), 15, 20, 22)


def road_texture(scene: Scene) -> np.ndarray:
    return flat_texture(scene, (85, 85, 90), 12, 6, 10)


def grass_texture(scene: Scene) -> np.ndarray:
    rng, h, w = scene.rng, scene.height, scene.width
    texture = flat_texture(scene, (85, 160, 60), 15, 10, 6)
    streaks = rng.uniform(-18, 18, (max(2, h // 6), w)).astype(np.float32)
    streaks = cv2.resize(streaks, (w, h), interpolation=cv2.INTER_LINEAR)
    return texture + streaks[..., None]


REGION_TEXTURES: Dict[str, Callable[[Scene], np.ndarray]] = {
    'sky': sky_texture, 'building': building_texture, 'wall': wall_texture,
    'floor': floor_texture, 'tree': tree_texture, 'road': road_texture,
    'grass': grass_texture,
}


# ----- things drawn part by part ---------------------------------------------

def solid(scene: Scene, rgb: Sequence[float], grain: float = 4) -> np.ndarray:
    texture = np.broadcast_to(np.asarray(rgb, np.float32),
                              (scene.height, scene.width, 3)).copy()
    return texture + scene.rng.normal(0, grain, texture.shape[:2] + (1,))


def draw_person(scene: Scene, foot_x: float, foot_y: float) -> None:
    """Body ellipse with a skin-coloured round head, standing on a point."""
    rng, label = scene.rng, ADE_LABELS['person']
    height = rng.uniform(0.2, 0.35) * scene.height
    body_w, head_r = height * rng.uniform(0.13, 0.18), height * 0.11
    body_centre = (int(foot_x), int(foot_y - 0.4 * height))
    body = scene.blank_mask()
    cv2.ellipse(body, body_centre, (int(body_w), int(0.4 * height)), 0, 0,
                360, 1, -1)
    scene.paint(body, solid(scene, vivid_colour(rng)), label)
    head = scene.blank_mask()
    head_centre = (int(foot_x), int(foot_y - 0.8 * height - head_r * 0.8))
    cv2.circle(head, head_centre, max(2, int(head_r)), 1, -1)
    scene.paint(head, solid(scene, jittered(rng, (225, 185, 150), 15)), label)


def draw_car(scene: Scene, left: float, bottom: float) -> None:
    """Box body, cabin with windows and two dark wheels."""
    rng, label = scene.rng, ADE_LABELS['car']
    length = rng.uniform(0.18, 0.3) * scene.width
    body_h = length * rng.uniform(0.25, 0.32)
    wheel_r = max(2, int(body_h * 0.35))
    x0, x1 = int(left), int(left + length)
    y1 = int(bottom - wheel_r)
    y0 = int(y1 - body_h)
    body = scene.blank_mask()
    cv2.rectangle(body, (x0, y0), (x1, y1), 1, -1)
    cabin_pts = np.array([[x0 + 0.2 * length, y0], [x0 + 0.3 * length,
                          y0 - 0.8 * body_h], [x0 + 0.7 * length,
                          y0 - 0.8 * body_h], [x0 + 0.8 * length, y0]])
    cv2.fillPoly(body, [np.rint(cabin_pts).astype(np.int32)], 1)
    scene.paint(body, solid(scene, vivid_colour(rng)), label)
    window = scene.blank_mask()
    inset = np.array([[4, 0], [3, 3], [-3, 3], [-4, 0]]) * (body_h / 12)
    cv2.fillPoly(window, [np.rint(cabin_pts + inset).astype(np.int32)], 1)
    scene.paint(window, solid(scene, (170, 200, 230)), label)
    wheels = scene.blank_mask()
    for wheel_x in (x0 + 0.22 * length, x0 + 0.78 * length):
        cv2.circle(wheels, (int(wheel_x), y1), wheel_r, 1, -1)
    scene.paint(wheels, solid(scene, (25, 25, 25)), label)


def draw_tree(scene: Scene, base_x: float, base_y: float) -> None:
    """Brown trunk under a canopy made of overlapping green discs."""
    rng, label = scene.rng, ADE_LABELS['tree']
    radius = rng.uniform(0.06, 0.11) * scene.short_side
    trunk_h = radius * rng.uniform(0.8, 1.5)
    trunk = scene.blank_mask()
    cv2.rectangle(trunk, (int(base_x - radius * 0.15), int(base_y - trunk_h)),
                  (int(base_x + radius * 0.15), int(base_y)), 1, -1)
    scene.paint(trunk, solid(scene, jittered(rng, (95, 65, 40), 10)), label)
    canopy = scene.blank_mask()
    centre_y = base_y - trunk_h - radius * 0.7
    for _ in range(int(rng.integers(3, 6))):
        offset = rng.uniform(-0.8, 0.8, 2) * radius
        centre = (int(base_x + offset[0]), int(centre_y + offset[1]))
        cv2.circle(canopy, centre, int(radius * rng.uniform(0.6, 1.0)), 1, -1)
    scene.paint(canopy, REGION_TEXTURES['tree'](scene), label)


def draw_painting(scene: Scene, centre_x: float, centre_y: float) -> None:
    """Gold frame around a blocky multicoloured canvas."""
    rng, label = scene.rng, ADE_LABELS['painting']
    width = rng.uniform(0.15, 0.3) * scene.width
    height = width * rng.uniform(0.6, 1.2)
    x0, y0 = int(centre_x - width / 2), int(centre_y - height / 2)
    x1, y1 = int(centre_x + width / 2), int(centre_y + height / 2)
    frame = scene.blank_mask()
    cv2.rectangle(frame, (x0, y0), (x1, y1), 1, -1)
    scene.paint(frame, solid(scene, jittered(rng, (190, 150, 60), 15)), label)
    border = max(2, int(0.08 * min(width, height)))
    canvas = scene.blank_mask()
    cv2.rectangle(canvas, (x0 + border, y0 + border),
                  (x1 - border, y1 - border), 1, -1)
    blocks = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    art = cv2.resize(blocks, (scene.width, scene.height),
                     interpolation=cv2.INTER_NEAREST)
    scene.paint(canvas, art, label)


def draw_clutter(scene: Scene) -> None:
    """An unlabelled blob (label 0) of random colour."""
    rng = scene.rng
    radius = rng.uniform(0.05, 0.12) * scene.short_side
    centre = rng.uniform([0, 0], [scene.width, scene.height])
    angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))))
    radii = radius * rng.uniform(0.6, 1.0, len(angles))
    points = centre + np.stack([radii * np.cos(angles),
                                radii * np.sin(angles)], axis=1)
    blob = scene.blank_mask()
    cv2.fillPoly(blob, [np.rint(points).astype(np.int32)], 1)
    scene.paint(blob, solid(scene, vivid_colour(rng), grain=12),
                IGNORE_LABEL)


# ----- scene layouts ---------------------------------------------------------

def outdoor_scene(scene: Scene) -> None:
    rng, w, h = scene.rng, scene.width, scene.height
    horizon = rng.uniform(0.55, 0.75) * h
    scene.paint_class(np.ones((h, w), bool), 'sky')
    for _ in range(int(rng.integers(0, 4))):
        left = rng.uniform(-0.1, 0.9) * w
        right = left + rng.uniform(0.12, 0.3) * w
        top = horizon - rng.uniform(0.2, 0.45) * h
        block = scene.blank_mask()
        cv2.rectangle(block, (int(left), int(top)),
                      (int(right), int(horizon + 0.05 * h)), 1, -1)
        scene.paint_class(block, 'building')
    ground = scene.below_curve(horizon, rng.uniform(0, 0.03) * h)
    grass = rng.random() < 0.5
    scene.paint_class(ground, 'grass' if grass else 'road')
    if grass and rng.random() < 0.5:  # a road crossing the lawn
        band_top = rng.uniform(horizon + 0.05 * h, 0.9 * h)
        band = scene.below_curve(band_top, 0.02 * h)
        band &= ~scene.below_curve(band_top + rng.uniform(0.1, 0.2) * h, 0)
        scene.paint_class(band, 'road')
    for _ in range(int(rng.integers(1, 4))):
        draw_tree(scene, rng.uniform(0.05, 0.95) * w,
                  horizon + rng.uniform(0, 0.05) * h)
    for _ in range(int(rng.integers(0, 3))):
        draw_car(scene, rng.uniform(-0.05, 0.85) * w,
                 rng.uniform(horizon + 0.12 * h, h))
    for _ in range(int(rng.integers(0, 3))):
        draw_person(scene, rng.uniform(0.05, 0.95) * w,
                    rng.uniform(horizon + 0.05 * h, h))


def indoor_scene(scene: Scene) -> None:
    rng, w, h = scene.rng, scene.width, scene.height
    floor_line = rng.uniform(0.6, 0.78) * h
    scene.paint_class(np.ones((h, w), bool), 'wall')
    tilt = rng.uniform(-0.05, 0.05) * h
    xs = np.arange(w)[None, :]
    floor = np.arange(h)[:, None] >= floor_line + tilt * (2 * xs / w - 1)
    scene.paint_class(floor, 'floor')
    for _ in range(int(rng.integers(1, 3))):
        draw_painting(scene, rng.uniform(0.15, 0.85) * w,
                      rng.uniform(0.2, 0.5) * floor_line)
    for _ in range(int(rng.integers(0, 3))):
        draw_person(scene, rng.uniform(0.05, 0.95) * w,
                    rng.uniform(floor_line + 0.05 * h, h))


def mark_borders_ignored(labels: np.ndarray) -> None:
    """Set the ~2 px wide seams between differently labelled regions to 0."""
    kernel = np.ones((3, 3), np.uint8)
    seams = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    labels[seams] = IGNORE_LABEL


def render_ade_scene(rng: np.random.Generator, width: int,
                     height: int) -> Tuple[np.ndarray, np.ndarray]:
    scene = Scene(rng, width, height)
    if rng.random() < 0.6:
        outdoor_scene(scene)
    else:
        indoor_scene(scene)
    if rng.random() < 0.5:
        draw_clutter(scene)
    mark_borders_ignored(scene.labels)
    scene.image += rng.normal(0, 3, scene.image.shape).astype(np.float32)
    return scene.image, scene.labels


def make_ade20k_split(out: Path, split: str, num_images: int,
                      size: Tuple[int, int], seed: int) -> Dict[int, int]:
    """Write one split; return how many images contain each label."""
    width, height = size
    image_dir = out / 'images' / ADE_SPLIT_DIRS[split]
    label_dir = out / 'annotations' / ADE_SPLIT_DIRS[split]
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    images_per_label: Dict[int, int] = {}
    for index in range(num_images):
        rng = image_rng(seed, 'ade20k', split, index)
        image, labels = render_ade_scene(rng, width, height)
        stem = f'{ADE_FILE_PREFIX[split]}_{index + 1:08d}'
        write_rgb_jpg(image_dir / f'{stem}.jpg', image)
        write_label_png(label_dir / f'{stem}.png', labels)
        for label in np.unique(labels).tolist():
            images_per_label[label] = images_per_label.get(label, 0) + 1
    return images_per_label


def make_ade20k(out_dir: Union[str, Path], num_train: int = 64,
                num_val: int = 16, img_size: ImgSize = 256, seed: int = 0,
                overwrite: bool = False, verbose: bool = False) -> Path:
    """Write a toy ADE20K semantic segmentation dataset; return ``out_dir``."""
    check_counts(num_train=num_train, num_val=num_val)
    check_seed(seed)
    size = to_width_height(img_size)
    out = prepare_out_dir(out_dir, ['images', 'annotations'], overwrite)
    if verbose:
        print(f'toy ADE20K dataset in {out}:')
    names = {label: name for name, label in ADE_LABELS.items()}
    names[IGNORE_LABEL] = 'other (ignored)'
    for split, count in (('train', num_train), ('val', num_val)):
        images_per_label = make_ade20k_split(out, split, count, size, seed)
        if verbose:
            present = ', '.join(f'{names[label]}:{n}' for label, n in
                                sorted(images_per_label.items()))
            print(f'  {ADE_SPLIT_DIRS[split]}: {count} images '
                  f'(images per class: {present})')
    return out


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

DEFAULT_IMG_SIZE = {'coco': 320, 'ade20k': 256}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Generate a small deterministic synthetic dataset in the '
                    'real COCO or ADE20K layout.')
    kinds = parser.add_subparsers(dest='kind', required=True,
                                  title='dataset kinds')
    for kind, summary in (('coco', 'COCO instances (shapes as objects)'),
                          ('ade20k', 'ADE20K semantic segmentation scenes')):
        sub = kinds.add_parser(kind, help=summary, description=summary)
        sub.add_argument('out_dir', metavar='OUT_DIR', help='output folder')
        sub.add_argument('--num-train', type=int, default=64,
                         help='training images (default: 64)')
        sub.add_argument('--num-val', type=int, default=16,
                         help='validation images (default: 16)')
        sub.add_argument('--img-size', type=int, nargs='+',
                         default=[DEFAULT_IMG_SIZE[kind]],
                         metavar='SIZE', help='square side, or W H '
                         f'(default: {DEFAULT_IMG_SIZE[kind]})')
        sub.add_argument('--seed', type=int, default=0,
                         help='random seed (default: 0)')
        if kind == 'coco':
            sub.add_argument('--max-objects', type=int, default=4,
                             help='objects per image at most (default: 4)')
        sub.add_argument('--overwrite', action='store_true',
                         help='replace an existing toy dataset in OUT_DIR')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(num_train=args.num_train, num_val=args.num_val,
                   img_size=args.img_size, seed=args.seed,
                   overwrite=args.overwrite, verbose=True)
    try:
        if args.kind == 'coco':
            make_coco(args.out_dir, max_objects=args.max_objects, **options)
        else:
            make_ade20k(args.out_dir, **options)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    return 0


if __name__ == '__main__':
    sys.exit(main())
