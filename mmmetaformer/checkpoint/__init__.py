"""Checkpoint formats: pure converters and a strict, code-free loader."""
from .formats import (CONVERTERS, FORMATS, NATIVE_META_KEY, detect_format,
                      to_native)
from .loading import CheckpointMismatchError, load_pretrained, read_checkpoint

__all__ = [
    'CONVERTERS', 'FORMATS', 'NATIVE_META_KEY', 'CheckpointMismatchError',
    'detect_format', 'load_pretrained', 'read_checkpoint', 'to_native'
]
