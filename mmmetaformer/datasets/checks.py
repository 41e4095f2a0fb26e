"""Checks of a dataset's annotations, run once before training or testing.

mmdet and mmseg take a broken annotation file for data: a NaN or negative
box is dropped without a word (a run whose boxes are all bad trains with
``loss_bbox: 0.0000``), two images with one id are evaluated as one, a
category id missing from ``categories`` ends in "need at least one array
to concatenate", a label value beyond the classes in "Target 199 is out of
bounds" mid-epoch. ``tools/train.py`` and ``tools/test.py`` call
``check_datasets`` (through ``mmmetaformer_tools.launch``) before the Runner
starts; each problem is one line naming the file, the image / annotation id
or value, and the fix (``DataCheckError`` or ``ImageError``; the tools exit
with status 2).

What is checked, and when (the checks must stay cheap on COCO's 860k boxes
and ADE20K's 25k label maps):

* COCO (a dataset whose class is mmdet's ``CocoDataset`` or a subclass, and
  every ``.json`` its evaluator reads), at startup, in one pass over the
  parsed JSON (``check_coco_annotations``): ``images``, ``annotations``,
  ``categories`` are lists of objects with ids; image ids, annotation ids
  and category ids are unique; each annotation names an image and a
  category that exist; each ``bbox`` is four numbers. Boxes mmdet's
  ``CocoDataset.parse_data_info`` drops (a NaN or infinite coordinate, a
  width or height under 1 pixel or negative, no area, nothing inside the
  image) are counted and the count is logged with the first one; with
  ``strict=True`` (``--strict-data``) the first one is an error. Images are
  not opened at startup: each is checked when it is loaded
  (``LoadCheckedImageFromFile``).
* Segmentation (a dataset whose class is mmseg's ``BaseSegDataset`` or a
  subclass, ADE20K among them): at startup, the *headers* of every image and
  label map (``read_image_header``: the first bytes of each file, no
  decoding): the label map exists, declares no more than ``max_pixels``
  pixels (a 60000x60000 PNG is refused before any decoding) and has the
  image's size (or its transpose, which an EXIF rotation of the image
  explains; the loader compares the decoded sizes). The label *values*
  need a full decode, which on ADE20K's 25k maps would take minutes before
  the first step; they are checked as each map is loaded, by
  ``LoadCheckedSegAnnotations`` (``seg_transforms.py``), which the tools
  swap in for mmseg's ``LoadAnnotations`` by name, with the dataset's class
  count, as they swap ``LoadImageFromFile`` for ``LoadCheckedImageFromFile``.
  It decodes through the same pixel-limited reader as images
  (``decode_label_map``) and refuses a map of another size than its image
  or a value that is no class (``check_label_map``).

Files behind a ``backend_args`` storage backend (not on a local disk) are
left to the loaders' checks.
"""

import copy
import importlib
import json
import logging
import math
import os.path as osp

import numpy as np

from .images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    UnreadableImageError,
    read_image_header,
)

_SEG_LOADERS = ('LoadAnnotations', 'mmseg.LoadAnnotations')
CHECKED_SEG_LOADER = 'LoadCheckedSegAnnotations'


class DataCheckError(ValueError):
    """A dataset that cannot be used; the message is one line naming it."""


# ------------------------------------------------------------------ COCO --


def _ids(items, what, ann_file):
    """``{id: item}`` of a list of COCO objects; a repeated id is an error."""
    if not isinstance(items, list):
        raise DataCheckError(
            f'{ann_file}: "{what}" is a '
            f'{type(items).__name__}, not a list; this is '
            'not a COCO annotation file'
        )
    by_id = {}
    for item in items:
        if not isinstance(item, dict) or 'id' not in item:
            raise DataCheckError(
                f'{ann_file}: an entry of "{what}" has no '
                f'"id": {str(item)[:80]}'
            )
        if item['id'] in by_id:
            raise DataCheckError(
                _duplicate(what, item, by_id[item['id']], ann_file)
            )
        by_id[item['id']] = item
    return by_id


def _duplicate(what, item, first, ann_file):
    if what == 'images':
        return (
            f'{ann_file}: image id {item["id"]} is used twice, by '
            f'{first.get("file_name")!r} and {item.get("file_name")!r}; '
            'the second would be trained and evaluated as the first. '
            'Give each image its own id'
        )
    if what == 'categories':
        return (
            f'{ann_file}: category id {item["id"]} is used twice, by '
            f'{first.get("name")!r} and {item.get("name")!r}; give each '
            'category its own id'
        )
    return (
        f'{ann_file}: annotation id {item["id"]} is used twice (images '
        f'{first.get("image_id")} and {item.get("image_id")}); give '
        'each annotation its own id'
    )


def _dropped_reason(bbox, area, width, height):
    """Why mmdet's ``CocoDataset.parse_data_info`` drops a box, or None.

    Its rules: nothing inside the image, ``area <= 0``, width or height
    under 1 pixel (NaN coordinates fall under the first rule there).
    """
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return 'a coordinate is not a finite number'
    if w < 1 or h < 1:
        return (
            'a negative width or height'
            if min(w, h) < 0
            else 'a width or height under 1 pixel'
        )
    if isinstance(width, (int, float)) and isinstance(height, (int, float)):
        inside_w = max(0, min(x + w, width) - max(x, 0))
        inside_h = max(0, min(y + h, height) - max(y, 0))
        if inside_w * inside_h == 0:
            return f'no part inside the {width}x{height} image'
    if not isinstance(area, (int, float)) or not area > 0:
        return f'area {area!r} (must be > 0)'
    return None


def check_coco_annotations(ann_file, strict=False, key=None):
    """Check a COCO annotation file; return the boxes mmdet would drop.

    Args:
        ann_file (str): path of the ``.json`` file.
        strict (bool): a box mmdet would drop is an error.
        key (str, optional): the config key naming the file, said when it
            does not parse (as the tools say it of a JSON error later).

    Returns:
        tuple: ``(dropped, total, first)``: how many boxes mmdet drops, how
        many annotations there are, and a one-line description of the first
        dropped one (None if none).

    Raises:
        DataCheckError: a structural problem (see the module docstring), or
            with ``strict`` a box mmdet would drop.
    """
    try:
        with open(ann_file) as f:
            coco = json.load(f)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataCheckError(
            f'{key + ": " if key else ""}annotation file {ann_file} is not '
            f'valid JSON ({exc}). Fix or regenerate it'
        ) from None
    if not isinstance(coco, dict):
        raise DataCheckError(
            f'{ann_file}: a COCO annotation file is a JSON '
            f'object, this one holds a '
            f'{type(coco).__name__}'
        )
    for key in ('images', 'categories'):
        if key not in coco:
            raise DataCheckError(
                f'{ann_file}: no "{key}" list; this is not '
                'a COCO annotation file'
            )
    images = _ids(coco['images'], 'images', ann_file)
    for image in images.values():
        size = (image.get('width'), image.get('height'))
        if not all(isinstance(v, (int, float)) and v > 0 for v in size):
            raise DataCheckError(
                f'{ann_file}: image id {image["id"]} '
                f'({image.get("file_name")!r}) has width, height {size}; '
                'COCO images give both as positive numbers'
            )
    categories = _ids(coco['categories'], 'categories', ann_file)
    annotations = coco.get('annotations', [])
    _ids(annotations, 'annotations', ann_file)
    dropped, first = 0, None
    for ann in annotations:
        ann_id, image_id = ann['id'], ann.get('image_id')
        where = f'{ann_file}: annotation id {ann_id} (image id {image_id})'
        if image_id not in images:
            raise DataCheckError(
                f'{where} names no image of "images"; add '
                'the image or remove the annotation'
            )
        if ann.get('category_id') not in categories:
            raise DataCheckError(
                f'{where} has category_id {ann.get("category_id")!r}, which '
                f'"categories" does not list (ids: '
                f'{_short(sorted(categories, key=str))}); add the category '
                'or fix the id'
            )
        if ann.get('ignore', False):
            continue  # mmdet skips these, by design
        bbox = ann.get('bbox')
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in bbox
            )
        ):
            raise DataCheckError(
                f'{where} has bbox {str(bbox)[:80]}; a COCO '
                'bbox is four numbers [x, y, width, '
                'height]'
            )
        image = images[image_id]
        reason = _dropped_reason(
            bbox, ann.get('area'), image.get('width'), image.get('height')
        )
        if reason is None:
            continue
        dropped += 1
        if first is None:
            first = (
                f'annotation id {ann_id} (image id {image_id}) bbox '
                f'{bbox}: {reason}'
            )
            if strict:
                raise DataCheckError(
                    f'{where} has bbox {bbox}: {reason}; mmdet would drop it '
                    'without a word. Fix or remove such boxes, or run '
                    'without --strict-data to drop them'
                )
    return dropped, len(annotations), first


def _short(values, limit=12):
    values = [str(v) for v in values]
    if len(values) > limit:
        return ', '.join(values[:limit]) + f', ... ({len(values)} in all)'
    return ', '.join(values)


# ---------------------------------------------------------- segmentation --


def check_label_map(
    label,
    name,
    num_classes,
    reduce_zero_label,
    ignore_index=255,
    image_hw=None,
    image_name=None,
):
    """Refuse a decoded label map mmseg cannot train or score on.

    Args:
        label (np.ndarray): HxW as decoded (before mmseg's uint8 cast, so
            that a 16-bit 256 is not taken for 0).
        name (str): the label map's file, for messages.
        num_classes (int): classes of the dataset's label space (before a
            class subset's ``label_map``).
        reduce_zero_label (bool): ADE20K's convention: 0 is ignored and
            1..num_classes are the classes 0..num_classes-1.
        ignore_index (int): the value that is ignored (255).
        image_hw (tuple, optional): ``(height, width)`` of the decoded image.
        image_name (str, optional): the image's file, for messages.

    Raises:
        ImageError: one line naming the file, the value and the fix.
    """
    if label.ndim != 2:
        raise ImageError(
            f'{name}: a label map has one channel (a gray or palette PNG of '
            f'class indices); this one decodes to shape {label.shape}. Save '
            'class indices, not colours'
        )
    if image_hw is not None and tuple(label.shape) != tuple(image_hw):
        raise ImageError(
            f'{name}: the label map is {label.shape[1]}x{label.shape[0]} '
            f'but its image {image_name or ""} is {image_hw[1]}x'
            f"{image_hw[0]}; a label map must have its image's size. "
            'Re-export it at that size'
        )
    if label.dtype in (np.uint8, np.uint16):
        counts = np.bincount(label.ravel())
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(label, return_counts=True)
    values = values.astype(np.int64)
    reduced = values.copy()
    if reduce_zero_label:  # as mmseg's LoadAnnotations
        reduced = values - 1
        reduced[values == 0] = 255
        reduced[reduced == 254] = 255
    valid = ((reduced >= 0) & (reduced < num_classes)) | (
        reduced == ignore_index
    )
    if valid.all():
        return
    bad = np.flatnonzero(~valid)
    if reduce_zero_label:
        allowed = (
            f'1..{num_classes} (the classes 0..{num_classes - 1}, '
            f'reduce_zero_label=True), 0 and 255 (ignored)'
        )
    else:
        allowed = f'0..{num_classes - 1} and {ignore_index} (ignored)'
    count = counts[bad[0]]
    others = f'; {len(bad) - 1} more bad value(s)' if len(bad) > 1 else ''
    raise ImageError(
        f'{name}: label value {values[bad[0]]} ({count} '
        f'pixel{"s" if count != 1 else ""}{others}) is no class of the '
        f"dataset's {num_classes}: the values "
        f"are {allowed}. Fix the label map, or the dataset's classes or "
        'reduce_zero_label'
    )


def label_space_size(dataset):
    """Classes of a built mmseg dataset's label space, before a class
    subset's ``label_map`` (which maps those values)."""
    if dataset.label_map:
        return len(dataset.label_map)
    return len(dataset.metainfo['classes'])


def check_seg_files(data_list, max_pixels=DEFAULT_MAX_PIXELS):
    """Headers of every image and label map of ``data_list`` (mmseg's
    ``load_data_list``): present, within ``max_pixels``, of one size.

    Returns:
        int: how many image / label-map pairs were checked.

    Raises:
        ImageError, DataCheckError: one line naming the file.
    """
    pairs = 0
    for info in data_list:
        seg_path = info.get('seg_map_path')
        if seg_path is None:
            continue
        img_path = info['img_path']
        if not osp.isfile(seg_path):
            raise DataCheckError(
                f'{seg_path}: the label map of {img_path} does not exist; '
                'each image needs one, named as the image with the '
                "dataset's seg_map_suffix"
            )
        width, height = read_image_header(img_path, max_pixels)
        try:
            seg_size = read_image_header(seg_path, max_pixels)
        except UnreadableImageError as exc:
            reason = str(exc).split(': not a readable image (', 1)[-1]
            raise DataCheckError(
                f'cannot decode label map {seg_path}: it is corrupt or not '
                f'an image ({reason}'
            ) from None
        if seg_size not in ((width, height), (height, width)):
            raise DataCheckError(
                f'{seg_path}: the label map is {seg_size[0]}x{seg_size[1]} '
                f'but its image {img_path} is {width}x{height}; a label map '
                "must have its image's size. Re-export it at that size"
            )
        pairs += 1
    return pairs


# ----------------------------------------------------------------- tools --


def _datasets(cfg, dataloader_keys):
    """``(key, dataset cfg)`` of the loaders, wrappers unwrapped."""
    pending = [
        (key, (cfg.get(key) or {}).get('dataset')) for key in dataloader_keys
    ]
    while pending:
        key, dataset = pending.pop(0)
        if not dataset:
            continue
        if 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset
            pending.append((key, dataset['dataset']))
        elif 'datasets' in dataset:  # ConcatDataset
            pending.extend((key, d) for d in dataset['datasets'])
        else:
            yield key, dataset


def _registered_class(scope, type_name):
    try:
        registry = importlib.import_module(f'{scope}.registry').DATASETS
        return (
            registry.get(type_name)
            if isinstance(type_name, str)
            else type_name
        )
    except Exception:  # noqa: BLE001  an unknown type: the Runner says so
        return None


def _coco_files(cfg, scope, dataloader_keys):
    """``(config key, path)`` of the annotation files of COCO datasets and
    of their evaluators, each file once."""
    from mmdet.datasets import CocoDataset

    files = []
    for key, dataset in _datasets(cfg, dataloader_keys):
        cls = _registered_class(scope, dataset.get('type'))
        ann_file = dataset.get('ann_file', '')
        if not (
            isinstance(cls, type)
            and issubclass(cls, CocoDataset)
            and ann_file
            and dataset.get('backend_args') is None
        ):
            continue
        if not osp.isabs(ann_file):
            ann_file = osp.join(dataset.get('data_root') or '', ann_file)
        files.append((key, ann_file))
        evaluator_key = key.replace('_dataloader', '_evaluator')
        metrics = cfg.get(evaluator_key) or []
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            if isinstance(metric, dict) and metric.get('ann_file'):
                files.append((evaluator_key, metric['ann_file']))
    seen = set()
    for key, path in files:
        if (
            path.endswith('.json')
            and osp.isfile(path)
            and osp.realpath(path) not in seen
        ):
            seen.add(osp.realpath(path))
            yield key, path


def _check_seg_dataset(dataset_cfg, scope, max_pixels):
    """Check one segmentation dataset's files and swap its label loader.

    Returns:
        int: pairs checked, or None when it is no mmseg dataset.
    """
    from mmseg.datasets import BaseSegDataset

    cls = _registered_class(scope, dataset_cfg.get('type'))
    if not (isinstance(cls, type) and issubclass(cls, BaseSegDataset)):
        return None
    registry = importlib.import_module(f'{scope}.registry').DATASETS
    args = copy.deepcopy(dict(dataset_cfg))
    args.update(pipeline=[], lazy_init=True)
    try:
        dataset = registry.build(args)
        data_list = dataset.load_data_list()
    except (AssertionError, OSError, ValueError) as exc:
        raise DataCheckError(
            f'{dataset_cfg.get("type")}: cannot list the dataset ({exc})'
        ) from None
    for transform in dataset_cfg.get('pipeline', None) or []:
        if transform.get('type') in _SEG_LOADERS and transform.get(
            'imdecode_backend', 'pillow'
        ) in ('pillow', 'cv2'):
            transform['type'] = CHECKED_SEG_LOADER
            transform['num_classes'] = label_space_size(dataset)
            transform['ignore_index'] = dataset.ignore_index
    if dataset.backend_args is not None:
        return 0
    return check_seg_files(data_list, max_pixels)


def check_datasets(
    cfg, scope, dataloader_keys, strict=False, max_pixels=DEFAULT_MAX_PIXELS
):
    """Check the datasets of ``cfg``'s loaders before the Runner starts.

    COCO annotation files are checked whole; segmentation datasets have the
    headers of their files checked and their ``LoadAnnotations`` swapped for
    ``LoadCheckedSegAnnotations`` (which checks each label map's values as
    it loads it). See the module docstring for what and why.

    Args:
        cfg (Config): the tool's config; segmentation pipelines are edited.
        scope (str): 'mmdet' or 'mmseg'.
        dataloader_keys (tuple): e.g. ``('train_dataloader',
            'val_dataloader')``.
        strict (bool): a box mmdet would drop is an error, not a count.
        max_pixels (int): the image readers' pixel limit.

    Raises:
        DataCheckError, ImageError: one line naming the file and the fix.
    """
    from mmengine.logging import print_log

    if scope == 'mmdet':
        for key, ann_file in _coco_files(cfg, scope, dataloader_keys):
            dropped, total, first = check_coco_annotations(
                ann_file, strict, key
            )
            if dropped:
                print_log(
                    f'{ann_file}: {dropped} of {total} boxes are dropped, as '
                    f'mmdet drops them; the first: {first}. Fix them, or '
                    'pass --strict-data to refuse such a file',
                    logger='current',
                    level=logging.WARNING,
                )
    elif scope == 'mmseg':
        for _, dataset in _datasets(cfg, dataloader_keys):
            _check_seg_dataset(dataset, scope, max_pixels)


__all__ = [
    'CHECKED_SEG_LOADER',
    'DataCheckError',
    'check_coco_annotations',
    'check_datasets',
    'check_label_map',
    'check_seg_files',
    'label_space_size',
]
