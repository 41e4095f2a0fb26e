"""What ``tools/test.py`` writes besides the metrics, whole or not at all.

mmdet's and mmseg's test tools write their results in place: the ``--out``
pickle (mmdet's ``DumpDetResults``, ``mmengine.fileio.dump``), the label
maps (mmseg's ``IoUMetric(output_dir=...)``, ``PIL.Image.save``) and the
``--show-dir`` pictures (``mmcv.imwrite`` in the visualizers; mmseg's go
through ``LocalVisBackend.add_image``, ``cv2.imwrite``). A full disk or a
kill leaves a truncated file under its final name. Here each of them goes
through ``atomic_output``, by the frameworks' public extension points:

* ``write_label_map``: a label-map PNG (also ``tools/infer.py``'s);
* ``det_results_dump``: ``DumpDetResults`` (the same pickle) writing it
  through ``atomic_output``;
* ``SegLabelMapWriter``: a metric writing each image's label map as
  ``IoUMetric`` does, through ``atomic_output``;
* ``write_pictures_atomically``: the config's visualizer with
  ``AtomicPictureFiles`` mixed in (the pictures drawn to ``out_file``), and
  ``AtomicLocalVisBackend`` in place of ``LocalVisBackend`` (the pictures
  the visualizer hands to its backends).
"""

import contextlib
import os
import os.path as osp

import cv2
import numpy as np
from mmengine.dist import master_only
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.registry import VISBACKENDS
from mmengine.visualization import LocalVisBackend

from mmmetaformer.engine.checkpoint_hooks import (
    atomic_output,
    write_bytes_atomically,
)


def write_label_map(path, labels):
    """Write ``labels`` (H x W class indices) to the PNG ``path`` through
    ``atomic_output``: 8-bit as mmseg writes them, 16-bit where a class
    index passes 255 (8 bits would wrap it)."""
    from PIL import Image

    with atomic_output(path) as partial:
        Image.fromarray(
            labels.astype(np.uint8 if labels.max() < 256 else np.uint16)
        ).save(partial, format='PNG')


def det_results_dump(out_file):
    """mmdet's ``DumpDetResults(out_file_path=out_file)`` whose pickle is
    written through ``atomic_output``: the same content (``process`` is
    mmdet's), whole or not at all."""
    from mmdet.evaluation import DumpDetResults
    from mmengine.fileio import dump

    class AtomicDumpDetResults(DumpDetResults):
        def compute_metrics(self, results):
            with atomic_output(self.out_file_path) as partial:
                # the format by name: the partial file's suffix is not .pkl
                dump(results, partial, file_format='pkl')
            print_log(
                f'Results has been saved to {self.out_file_path}.',
                logger='current',
            )
            return {}

    return AtomicDumpDetResults(out_file_path=out_file)


class SegLabelMapWriter(BaseMetric):
    """Write each image's predicted label map (``write_label_map``) to
    ``out_dir/<image name>.png``: what mmseg's
    ``IoUMetric(output_dir=out_dir)`` writes (one added where the dataset
    reduces the zero label, as ADE20K's official indices start at 1),
    whole or not at all. Computes no metric."""

    def __init__(self, out_dir, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            labels = sample['pred_sem_seg']['data'][0].cpu().numpy()
            if sample.get('reduce_zero_label', False):
                labels = labels + 1
            name = osp.splitext(osp.basename(sample['img_path']))[0] + '.png'
            write_label_map(osp.join(self.out_dir, name), labels)
            self.results.append(name)

    def compute_metrics(self, results):
        print_log(
            f'{len(results)} label maps written to {self.out_dir}',
            logger='current',
        )
        return {}


class AtomicPictureFiles:
    """Mixed into a visualizer (before mmdet's or mmseg's own class): the
    picture ``add_datasample`` draws to ``out_file`` goes through
    ``atomic_output``. The visualizers encode by the file's extension
    (``mmcv.imwrite``), so the picture is drawn to the partial file's name
    plus that extension, then renamed to the partial file. Only the main
    process draws, as in the visualizers."""

    @master_only
    def add_datasample(self, name, image, *args, out_file=None, **kwargs):
        if out_file is None:
            return super().add_datasample(name, image, *args, **kwargs)
        with atomic_output(out_file) as partial:
            drawn = partial + osp.splitext(out_file)[1]
            try:
                super().add_datasample(
                    name, image, *args, out_file=drawn, **kwargs
                )
                os.replace(drawn, partial)
            finally:
                with contextlib.suppress(OSError):
                    os.remove(drawn)


@VISBACKENDS.register_module(force=True)
class AtomicLocalVisBackend(LocalVisBackend):
    """``LocalVisBackend`` writing each picture (``add_image``) through
    ``atomic_output``, with its name: ``<save_dir>/<img_save_dir>/
    <name>_<step>.png``."""

    def __init__(self, save_dir, img_save_dir='vis_image', **kwargs):
        super().__init__(save_dir, img_save_dir, **kwargs)
        self.picture_dir = osp.join(save_dir, img_save_dir)

    def add_image(self, name, image, step=0, **kwargs):
        assert image.dtype == np.uint8, image.dtype
        os.makedirs(self.picture_dir, exist_ok=True)
        ok, png = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert ok, f'OpenCV could not encode the picture {name}'
        write_bytes_atomically(
            osp.join(self.picture_dir, f'{name}_{step}.png'), png.tobytes()
        )


def write_pictures_atomically(cfg, scope):
    """Make the visualizer ``cfg`` builds write every picture through
    ``atomic_output``: its class with ``AtomicPictureFiles`` mixed in
    (registered in the scope's registry as ``Atomic<class name>``), and
    ``AtomicLocalVisBackend`` for each ``LocalVisBackend``."""
    import types
    from importlib import import_module

    registry = import_module(f'{scope}.registry').VISUALIZERS
    own = cfg.visualizer.type
    own = own if isinstance(own, type) else registry.get(own)
    name = f'Atomic{own.__name__}'
    if name not in registry.module_dict:
        # new_class: the visualizers' metaclass (ManagerMeta) builds it
        registry.register_module(
            name=name, module=types.new_class(name, (AtomicPictureFiles, own))
        )
    cfg.visualizer.type = name
    for backend in cfg.visualizer.get('vis_backends') or []:
        if backend['type'] in ('LocalVisBackend', LocalVisBackend):
            backend['type'] = 'AtomicLocalVisBackend'
