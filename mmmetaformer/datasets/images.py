"""The one image reader of the tools and the data pipeline.

OpenCV turns a bad image into a traceback that does not name the file
(``!buf.empty()``, ``!_src.empty() in function 'cvtColor'``), decodes a file
that declares 20000x20000 pixels in full before anything can refuse it, and
returns a partly grey picture for a truncated JPEG. ``read_image`` and
``decode_image`` refuse, with one line naming the file and the reason:

* an empty file;
* more pixels than ``max_pixels`` (default 100 megapixels, far above real
  photos), read from the header *before* decoding: the PNG ``IHDR`` chunk,
  the JPEG ``SOF`` segment, Pillow's lazy header read for other formats. A
  file whose size cannot be read that way is not decoded;
* a degenerate size: a side of 0, or a long side more than
  ``MAX_ASPECT_RATIO`` (100) times the short one. The pipelines resize
  with one scale for both sides (``keep_ratio``); below that ratio the short
  side stays at least one pixel when the long side is brought to 100 px,
  so 4x4000 (ratio 1000) is refused while panoramas (up to 10:1) read;
* data OpenCV cannot decode, a truncated PNG (no ``IEND`` chunk) or JPEG
  (no end-of-image marker after its last scan), or a decoded size that
  differs from the header's;
* corrupt JPEG data: a scan cut short (an end marker appended to a cut
  file), bad Huffman codes. libjpeg fills what is missing with grey, prints
  "Corrupt JPEG data: ..." on stderr and OpenCV returns the picture. While
  OpenCV decodes a JPEG, file descriptor 2 goes to a temporary file (under
  a lock); libjpeg's corrupt-data warnings there are an error
  (``_LIBJPEG_CORRUPT``), the rest is passed on to stderr. Pillow decodes
  such files without a word, so OpenCV's decode is the one watched.
  "N extraneous bytes before marker" is no error: libjpeg skips the bytes
  and every pixel decodes. A process without a usable stderr or temporary
  directory decodes unwatched.

Decoding is OpenCV's, with mmcv's flags, so a valid image gives the array
``mmcv.imfrombytes`` gives. Label maps (``decode_label_map``) go through
the same header checks and decode with Pillow, as mmseg's loader does, so a
palette PNG gives its indices. ``read_image_header`` checks a file's header
alone, from its first bytes: cheap enough for every file of a dataset at
startup (``mmmetaformer/datasets/checks.py``).
"""

import contextlib
import io
import os
import re
import struct
import sys
import tempfile
import threading
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 100
CHANNEL_ORDERS = ('bgr', 'rgb')
FLAGS = ('color', 'grayscale', 'unchanged')

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8), DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# libjpeg warnings (jerror.h) after which pixels are missing or wrong
# (other warnings, such as "Invalid SOS parameters for sequential JPEG",
# come with files that decode whole)
_LIBJPEG_CORRUPT = re.compile(
    r'Corrupt JPEG data(?!: \d+ extraneous bytes)|Premature end of JPEG '
    r'file'
)
# The header of a file is read from its first bytes (startup checks of
# whole datasets); a JPEG with a large EXIF block is read further.
_HEADER_BYTES = 65536
_STDERR_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used; the message is one line naming it."""


class UnreadableImageError(ImageError):
    """Not an image: no header giving a size (garbage, another format)."""


def _png_size(data):
    """(width, height) from the IHDR chunk, which must come first."""
    if len(data) < 24 or data[12:16] != b'IHDR':
        return None
    return struct.unpack('>II', data[16:24])


def _jpeg_size(data):
    """(width, height) from the first SOF segment, walking the markers."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack('>H', data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack('>HH', data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA or length < 2:  # a scan before any frame header
            return None
        pos += 2 + length
    return None


def _pillow_size(data):
    """(width, height) from Pillow's header read (no pixel is decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # DecompressionBombWarning
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses beyond twice its own limit; its message says why
        return _declared_in(str(exc))
    except Exception:  # noqa: BLE001  Pillow raises many types; unknown
        return None


def _declared_in(message):
    """(pixels, 1) from Pillow's bomb message, so the limit check refuses."""
    match = re.search(r'\((\d+) pixels\)', message)
    return (int(match.group(1)), 1) if match else None


def _truncation(data, kind):
    if kind == 'PNG' and b'IEND' not in data[-32:]:
        return 'truncated PNG: no IEND chunk at its end'
    if kind == 'JPEG' and data.rfind(b'\xff\xd9') < data.rfind(b'\xff\xda'):
        return 'truncated JPEG: no end-of-image marker after its last scan'
    return None


def _declared_size(data, name):
    """``(kind, width, height)`` from the header of encoded ``data``."""
    if not data:
        raise ImageError(f'{name}: the image file is empty')
    if data.startswith(_PNG_SIGNATURE):
        kind, size = 'PNG', _png_size(data)
    elif data.startswith(b'\xff\xd8'):
        kind, size = 'JPEG', _jpeg_size(data)
    else:
        kind, size = 'image', _pillow_size(data)
    if size is None:
        return kind, None
    return (kind, *size)


def _check_size(kind, width, height, name, max_pixels):
    if width * height > max_pixels:
        raise ImageError(
            f'{name}: the {kind} header declares {width}x{height} = '
            f'{width * height} pixels, more than max_pixels={max_pixels}; '
            f'not decoded (raise max_pixels if you trust the file)'
        )
    if min(width, height) == 0 or max(width, height) > MAX_ASPECT_RATIO * min(
        width, height
    ):
        raise ImageError(
            f'{name}: degenerate image size {width}x{height} (each side must '
            f'be at least 1/{MAX_ASPECT_RATIO} of the other, so a resize '
            f'keeps both sides)'
        )


def _unreadable(kind, data, name):
    return UnreadableImageError(
        f'{name}: not a readable image (no {kind} header giving its size;'
        f' first bytes {bytes(data[:8])!r})'
    )


def check_image_header(data, name, max_pixels=DEFAULT_MAX_PIXELS):
    """The declared ``(width, height)`` of encoded image ``data``, checked.

    Raises:
        ImageError: empty, size unreadable from the header, degenerate,
            more than ``max_pixels`` pixels, or visibly truncated.
    """
    kind, *size = _declared_size(data, name)
    if size == [None]:
        raise _unreadable(kind, data, name)
    width, height = size
    _check_size(kind, width, height, name, max_pixels)
    reason = _truncation(data, kind)
    if reason:
        raise ImageError(f'{name}: {reason}')
    return width, height


def read_image_header(path, max_pixels=DEFAULT_MAX_PIXELS):
    """The declared ``(width, height)`` of image file ``path``, checked as
    ``check_image_header`` checks it but from the first bytes only (64 KiB,
    more for a JPEG whose frame header comes later), without decoding and
    without the end-of-file checks: cheap enough for every file of a
    dataset at startup.

    Raises:
        ImageError: missing, empty, unreadable header, degenerate or more
            than ``max_pixels`` pixels.
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read(_HEADER_BYTES)
            kind, *size = _declared_size(data, path)
            if size == [None] and len(data) == _HEADER_BYTES:
                data += f.read()
                kind, *size = _declared_size(data, path)
    except OSError as exc:
        raise ImageError(
            f'{path}: cannot read the file ({exc.strerror or exc})'
        ) from None
    if size == [None]:
        raise _unreadable(kind, data, path)
    _check_size(kind, *size, path, max_pixels)
    return tuple(size)


@contextlib.contextmanager
def _stderr_of_native_code():
    """Collect what native code writes to file descriptor 2 in the block.

    Yields a list that holds the text once the block is left. libjpeg
    reports corrupt data only there; anything else written meanwhile (by
    another thread, say) is passed on to the real stderr.
    """
    with _STDERR_LOCK, contextlib.ExitStack() as stack:
        try:
            capture = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:  # no stderr, or no temporary file: not watched
            yield []
            return
        text = []
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(capture.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text.append(capture.read().decode(errors='replace'))


def _corrupt_jpeg_line(stderr_text):
    """libjpeg's first corrupt-data warning in ``stderr_text``, or None;
    every other line goes on to stderr."""
    corrupt, others = None, []
    for line in stderr_text.splitlines(keepends=True):
        if corrupt is None and _LIBJPEG_CORRUPT.search(line):
            corrupt = line.strip()
        elif not _LIBJPEG_CORRUPT.search(line):
            others.append(line)
    if others:
        try:
            os.write(2, ''.join(others).encode())
        except OSError:
            pass
    return corrupt


def decode_image(
    data,
    name,
    max_pixels=DEFAULT_MAX_PIXELS,
    channel_order='bgr',
    flag='color',
):
    """Decode encoded image ``data`` after ``check_image_header``.

    Args:
        data (bytes): the encoded file.
        name (str): the file's name for messages.
        max_pixels (int): refuse larger images before decoding.
        channel_order (str): 'bgr' (OpenCV's, mmcv's default) or 'rgb'.
        flag (str): as mmcv: 'color' (HxWx3 uint8), 'grayscale' (HxW) or
            'unchanged' (the file's channels and depth).

    Returns:
        np.ndarray: HxWx3 (color), HxW (grayscale) or as stored.
    """
    import cv2

    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(
            f'channel_order={channel_order!r}; valid: '
            f'{", ".join(CHANNEL_ORDERS)}'
        )
    if flag not in FLAGS:
        raise ValueError(f'flag={flag!r}; valid: {", ".join(FLAGS)}')
    width, height = check_image_header(data, name, max_pixels)
    cv_flag = dict(
        color=cv2.IMREAD_COLOR,
        grayscale=cv2.IMREAD_GRAYSCALE,
        unchanged=cv2.IMREAD_UNCHANGED,
    )[flag]
    is_jpeg = data.startswith(b'\xff\xd8')
    with (
        _stderr_of_native_code() if is_jpeg else contextlib.nullcontext([''])
    ) as stderr_text:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv_flag)
        except cv2.error as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise ImageError(
                f'{name}: OpenCV cannot decode it ({reason})'
            ) from None
    corrupt = _corrupt_jpeg_line(''.join(stderr_text)) if is_jpeg else None
    if corrupt:
        raise ImageError(
            f'{name}: corrupt JPEG data (libjpeg: "{corrupt}"); part of the '
            'picture would be grey. Re-encode the file from its source or '
            'remove it from the dataset'
        )
    if image is None or image.size == 0:
        raise ImageError(
            f'{name}: undecodable image data (corrupt, '
            f'truncated or not an image)'
        )
    if (image.shape[1], image.shape[0]) not in (
        (width, height),
        (height, width),
    ):
        # (height, width): OpenCV applies a JPEG's EXIF rotation
        raise ImageError(
            f'{name}: decoded size {image.shape[1]}x{image.shape[0]} differs '
            f'from the declared {width}x{height}; the file is damaged'
        )
    if channel_order == 'rgb' and image.ndim == 3:
        code = (
            cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        )
        image = cv2.cvtColor(image, code)
    return image


LABEL_BACKENDS = ('pillow', 'cv2')


def decode_label_map(
    data, name, max_pixels=DEFAULT_MAX_PIXELS, backend='pillow'
):
    """Decode a label map as mmseg's ``LoadAnnotations`` does, after the
    checks of ``check_image_header`` (pixel limit before decoding).

    mmseg reads label maps with ``mmcv.imfrombytes(flag='unchanged')``
    through Pillow, so that a palette PNG gives its indices (OpenCV would
    give the palette's colours); the same is done here.

    Args:
        data (bytes): the encoded file.
        name (str): the file's name for messages.
        max_pixels (int): refuse larger maps before decoding.
        backend (str): 'pillow' (mmseg's default) or 'cv2'.

    Returns:
        np.ndarray: HxW in the file's depth (uint8, uint16 or int32), or
        HxWxC (channels BGR first) for a colour file.
    """
    if backend not in LABEL_BACKENDS:
        raise ValueError(
            f'backend={backend!r}; valid: {", ".join(LABEL_BACKENDS)}'
        )
    if backend == 'cv2':
        return decode_image(data, name, max_pixels, 'bgr', 'unchanged')
    from PIL import Image

    width, height = check_image_header(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the size is checked above
            with Image.open(io.BytesIO(data)) as image:
                label = np.array(image)
    except Exception as exc:  # noqa: BLE001  Pillow raises many types
        reason = (
            re.sub(r' <[^>]*BytesIO[^>]*>', '', str(exc)) or type(exc).__name__
        )
        raise ImageError(
            f'{name}: Pillow cannot decode it ({reason})'
        ) from None
    if label.ndim == 3 and label.shape[2] >= 3:
        label[..., :3] = label[..., 2::-1]  # RGB to BGR, as mmcv
    if label.shape[:2] != (height, width):
        raise ImageError(
            f'{name}: decoded size {label.shape[1]}x{label.shape[0]} differs '
            f'from the declared {width}x{height}; the file is damaged'
        )
    return label


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS, channel_order='bgr'):
    """Read a color image file as an HxWx3 uint8 array, or refuse it.

    Raises:
        ImageError: one line naming ``path`` and the reason (missing,
            empty, undecodable or truncated, degenerate size, more pixels
            than ``max_pixels``, checked before decoding).
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(
            f'{path}: cannot read the file ({exc.strerror or exc})'
        ) from None
    return decode_image(data, path, max_pixels, channel_order)


__all__ = [
    'CHANNEL_ORDERS',
    'DEFAULT_MAX_PIXELS',
    'LABEL_BACKENDS',
    'MAX_ASPECT_RATIO',
    'ImageError',
    'UnreadableImageError',
    'check_image_header',
    'decode_image',
    'decode_label_map',
    'read_image',
    'read_image_header',
]
