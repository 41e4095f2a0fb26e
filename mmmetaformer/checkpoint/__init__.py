"""Checkpoint formats: pure converters and one strict, code-free reader.

Importing this package (which importing ``mmmetaformer`` does) installs the
safe loaders into mmengine's ``CheckpointLoader`` (``schemes.install``), so
every checkpoint mmengine, mmdet or mmseg fetches in this process is read
without running pickled code.
"""

from .formats import (
    CONVERTERS,
    FORMATS,
    NATIVE_META_KEY,
    detect_format,
    to_native,
)
from .loading import (
    HARMLESS_MISSING_SUFFIXES,
    CheckpointMismatchError,
    check_model_fits,
    load_model_strictly,
    load_pretrained,
    read_checkpoint,
)
from .reader import (
    SAFE_GLOBALS,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .schemes import install

install()

__all__ = [
    'CONVERTERS',
    'FORMATS',
    'HARMLESS_MISSING_SUFFIXES',
    'NATIVE_META_KEY',
    'SAFE_GLOBALS',
    'CheckpointError',
    'CheckpointMismatchError',
    'CorruptCheckpointError',
    'UnsafeCheckpointError',
    'check_model_fits',
    'detect_format',
    'install',
    'load_model_strictly',
    'load_pretrained',
    'read_checkpoint',
    'to_native',
]
