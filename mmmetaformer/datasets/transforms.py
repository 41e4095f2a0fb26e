"""Data pipeline transforms.

``LoadCheckedImageFromFile`` is mmcv's ``LoadImageFromFile`` decoding
through ``mmmetaformer.datasets.images``: an empty, undecodable, truncated or
degenerate image, a JPEG with corrupt data (which OpenCV decodes with grey
where data is missing), or one with more pixels than ``max_pixels`` (read
from its header before decoding), raises ``ImageError`` naming the file,
which the tools print as one line. It is registered in mmengine's root
``TRANSFORMS``, so configs of the ``mmdet`` and ``mmseg`` scopes both find
it. Label maps have their own checked loader
(``seg_transforms.LoadCheckedSegAnnotations``), which the tools swap in.
"""

import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.registry import TRANSFORMS

from .images import DEFAULT_MAX_PIXELS, FLAGS, ImageError, decode_image


@TRANSFORMS.register_module()
class LoadCheckedImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that refuses bad images with one clear line.

    Args:
        max_pixels (int): refuse images declaring more pixels (default 100
            megapixels), before decoding them.
        Others: as ``LoadImageFromFile``; ``color_type`` is one of
            ``'color'``, ``'grayscale'``, ``'unchanged'`` and decoding is
            OpenCV's (``imdecode_backend='cv2'``), as mmcv's default.
    """

    def __init__(self, max_pixels=DEFAULT_MAX_PIXELS, **kwargs):
        super().__init__(**kwargs)
        if self.color_type not in FLAGS:
            raise ValueError(
                f'LoadCheckedImageFromFile color_type='
                f'{self.color_type!r}; valid: {", ".join(FLAGS)}'
            )
        if self.imdecode_backend != 'cv2':
            raise ValueError(
                f'LoadCheckedImageFromFile imdecode_backend='
                f"{self.imdecode_backend!r}; valid: 'cv2'"
            )
        self.max_pixels = max_pixels

    def transform(self, results):
        filename = results['img_path']
        try:
            if self.file_client_args is not None:
                data = fileio.FileClient.infer_client(
                    self.file_client_args, filename
                ).get(filename)
            else:
                data = fileio.get(filename, backend_args=self.backend_args)
            img = decode_image(
                data, filename, self.max_pixels, 'bgr', self.color_type
            )
        except (OSError, ImageError) as exc:
            if self.ignore_empty:
                return None
            if isinstance(exc, FileNotFoundError):
                raise ImageError(
                    f'{filename}: the image does not exist (the '
                    'dataset lists it)'
                ) from None
            raise
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results
