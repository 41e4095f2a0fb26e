"""Synthetic data for demos and tests (no dataset classes: the stock mmdet
and mmseg ones read what ``toy`` writes), and the checked image loader of
our pipelines (registers ``LoadCheckedImageFromFile``)."""
from .toy import make_ade20k, make_coco
from .transforms import LoadCheckedImageFromFile

__all__ = ['LoadCheckedImageFromFile', 'make_coco', 'make_ade20k']
