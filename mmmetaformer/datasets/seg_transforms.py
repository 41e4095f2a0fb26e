"""``LoadCheckedSegAnnotations``: mmseg's ``LoadAnnotations`` checking each
label map it loads.

mmseg decodes a label map in full whatever its header declares (a PNG
declaring 60000x60000 took 1.2 GB before Pillow refused it), and a map of
another size than its image, or with a value beyond the classes, fails later
as a traceback that names no file ("The shape of the mask ... does not
match", "Target 199 is out of bounds"). This loader decodes through
``decode_label_map`` (the images' pixel limit, read from the header before
decoding) and refuses such a map with one line naming it
(``check_label_map``); a valid map then loads exactly as mmseg loads it.

The tools swap it in for ``LoadAnnotations`` by name, with the dataset's
class count (``mmmetaformer/datasets/checks.py``). It imports mmseg, so the
package does not import it; ``checks.check_datasets`` does. Registered in
mmengine's root ``TRANSFORMS``, which the ``mmseg`` scope searches too.
"""

import mmengine.fileio as fileio
from mmengine.registry import TRANSFORMS
from mmseg.datasets.transforms import LoadAnnotations

from .checks import check_label_map
from .images import DEFAULT_MAX_PIXELS, ImageError, decode_label_map


@TRANSFORMS.register_module()
class LoadCheckedSegAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that refuses bad label maps, one line.

    Args:
        num_classes (int): classes of the dataset's label space, before a
            class subset's ``label_map`` (ADE20K: 150).
        ignore_index (int): the ignored value (255).
        max_pixels (int): refuse label maps declaring more pixels, before
            decoding them.
        Others: as mmseg's ``LoadAnnotations``.
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        max_pixels=DEFAULT_MAX_PIXELS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.max_pixels = max_pixels

    def _load_seg_map(self, results):
        path = results['seg_map_path']
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError:
            raise ImageError(
                f'{path}: the label map does not exist (the dataset lists it)'
            ) from None
        label = decode_label_map(
            data, path, self.max_pixels, self.imdecode_backend
        )
        reduce_zero_label = self.reduce_zero_label
        if reduce_zero_label is None:
            reduce_zero_label = results['reduce_zero_label']
        check_label_map(
            label,
            path,
            self.num_classes,
            reduce_zero_label,
            self.ignore_index,
            results.get('ori_shape'),
            results.get('img_path'),
        )
        # the map is sound: mmseg's own loading (a second decode, about a
        # millisecond for ADE20K, keeps its reduce_zero_label and
        # label_map handling exactly)
        super()._load_seg_map(results)
