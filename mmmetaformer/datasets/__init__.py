"""Reading data safely: the checked image loader of our pipelines
(registers ``LoadCheckedImageFromFile``), the pixel-limited image and
label-map reader (``images``) and the dataset checks (``checks``). The
checked label-map loader (``seg_transforms``) imports mmseg, so it is
registered where it is used, not here."""

from .transforms import LoadCheckedImageFromFile

__all__ = ['LoadCheckedImageFromFile']
