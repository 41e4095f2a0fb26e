"""Synthetic data for demos and tests (no dataset classes: the stock mmdet
and mmseg ones read what ``toy`` writes)."""
from .toy import make_ade20k, make_coco

__all__ = ['make_coco', 'make_ade20k']
