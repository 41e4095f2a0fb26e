"""The one checkpoint reader: tensors and plain data, no pickled code.

``torch_load_safely`` reads a torch checkpoint with
``torch.load(weights_only=True)`` and the short allowlist ``SAFE_GLOBALS``,
``read_safetensors`` a ``.safetensors`` file (its string metadata kept as
``{'meta': metadata, 'state_dict': tensors}``). ``schemes.py`` routes every
path and URL scheme of mmengine's ``CheckpointLoader`` here.

What torch guarantees is used where it holds; what it does not is checked
here, before torch opens the file:

* torch >= 2.6 reads ``weights_only`` pickles safely and loads with it by
  default, so ``allow_in_torch_load`` registers ``SAFE_GLOBALS``
  process-wide (``torch.serialization.add_safe_globals``): mmengine's own
  ``torch.load`` calls then read Runner checkpoints (its loaders fail on
  them otherwise). On torch < 2.6 nothing is registered; ``torch.load``'s
  default there is unrestricted, so only our loaders are safe.
* torch < 2.6 hands a TorchScript archive (a ``constants.pkl`` or a
  ``code/`` folder) to ``torch.jit.load`` even with ``weights_only=True``
  (CVE-2025-32434), and takes a storage's size from the pickle rather than
  from its zip record. Both are refused here on every torch (defence in
  depth), and so is a zip member outside the archive's folder, which torch
  reports only as an internal assertion.
* The allowlist is what real OpenMMLab checkpoints carry: mmengine's
  ``HistoryBuffer`` (resume) and numpy arrays, dtypes and scalars. The numpy
  entries are stand-ins under numpy's names (of ``numpy.core`` and
  ``numpy._core``, so pickles of numpy 1 and 2 both read) that accept bool
  and numeric dtypes only and arrays of exactly their bytes: a file cannot
  choose object dtypes, dtype flags or memory layouts, as numpy's own
  ``__setstate__`` lets it (a crafted ``scalar`` of an object dtype crashes
  the process). They build real numpy values; arrays are an ``ndarray``
  subclass that pickles and copies as a plain ``ndarray``. A dtype pickled
  on its own (never in real checkpoints) stays a ``_DType`` holding it.
* Reading is bounded by the file, which torch does not do: before anything
  is decompressed or unpickled, the zip's central directory and the
  pickle's opcodes are checked against limits derived from the file's size
  S and its number R of tensor records (``data/`` members), so a small
  file can neither expand a zip bomb nor walk a flood of opcodes through
  torch's pure-Python unpickler (or the C pass that checks storage sizes):

  - members are stored (declared size = stored size, as torch.save writes
    them) or deflated (a re-zipped checkpoint, which torch reads too);
    together they expand to at most ``ZIP_EXPANSION_LIMIT`` x S, and a
    member outside ``data/`` (the pickle) to at most max(S,
    ``SMALL_MEMBER_FLOOR``);
  - the pickle holds at most ``PICKLE_OPS_BASE`` + ``PICKLE_OPS_PER_RECORD``
    x R opcodes and ``PICKLE_GLOBALS_LIMIT`` globals, fills memo slots in
    order, reads only slots it filled, and uses only opcodes torch's
    ``weights_only`` unpickler reads;
  - a legacy (non-zip) file counts R as S / ``LEGACY_BYTES_PER_RECORD``,
    its three header pickles may hold ``LEGACY_HEADER_OPS`` opcodes each,
    and the storages it claims must fit in the bytes after its pickles.

  A legitimate checkpoint sits far inside these: a tensor takes 30-50
  opcodes, trained weights deflate about 1.1 times. safetensors headers
  are bounded by safetensors itself (at most 100 MB and the file's size)
  before ``read_safetensors`` parses the metadata.
* A refused file raises ``UnsafeCheckpointError`` before any of its code
  could run; the message names the file, the object it asked for and how to
  re-save a trusted file. Anything else torch cannot read (truncated,
  damaged, not a checkpoint) raises ``CorruptCheckpointError``.
"""

import contextlib
import functools
import io
import json
import math
import mmap
import os.path as osp
import pickle
import struct
import types
import warnings
import zipfile
import zlib
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.utils import digit_version


def _refuse(what):
    # the reader reports 'Unsupported ...' lines as refusals
    raise pickle.UnpicklingError(f'Unsupported {what}')


def _named(obj, module, name):
    """``obj`` as torch's unpickler finds it: by ``module.name`` (torch <
    2.6 reads ``__name__``, later ones ``__qualname__``)."""
    obj.__module__, obj.__name__, obj.__qualname__ = module, name, name
    return obj


def _copy(function):
    return types.FunctionType(function.__code__, function.__globals__)


# The statistics methods HistoryBuffer registers for itself.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(owner, name):
    """``getattr`` as far as ``HistoryBuffer`` pickles need it: they carry
    their statistics methods as ``getattr(HistoryBuffer, 'min')``; the real
    ``getattr`` would reach any attribute of any allowed object."""
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    _refuse(
        f"getattr({owner!r}, {name!r}): not one of HistoryBuffer's "
        f'statistics methods'
    )


# Bool and numeric dtypes as numpy pickles name them ('f8', 'b1', 'u1' ...)
_NUMPY_CODES = frozenset(
    np.dtype(code).str[1:]
    for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
)
# The state numpy pickles for every such dtype, after its byte order.
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


class _DType:
    """``numpy.dtype(code, False, True)`` then its state: a bool or numeric
    type and a byte order, nothing else (no fields, sizes or flags)."""

    def __init__(self, code=None, align=False, copy=True):
        if code not in _NUMPY_CODES or (align, copy) != (False, True):
            _refuse(
                f'numpy dtype({code!r}, {align!r}, {copy!r}): only bool '
                f'and numeric dtypes are allowed'
            )
        self.code, self.dtype = code, None

    def __setstate__(self, state):
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[1] in ('<', '>', '|', '=')
            and state[2:] == _PLAIN_DTYPE_STATE
        ):
            _refuse(f'numpy dtype state {state!r}')
        self.dtype = np.dtype(self.code).newbyteorder(state[1])


class _Array(np.ndarray):
    """``numpy.ndarray`` from its state ``(1, shape, dtype, fortran,
    bytes)``, filled by numpy once the dtype is a ``_DType`` and the bytes
    are exactly ``prod(shape)`` items. Calling it (numpy's constructor
    takes a buffer, an offset and strides) is refused."""

    def __new__(cls, *args, **kwargs):
        _refuse('numpy.ndarray(...) call')

    def __setstate__(self, state):
        try:
            version, shape, dtype, fortran, data = state
            valid = (
                version == 1
                and isinstance(shape, tuple)
                and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(dtype, _DType)
                and dtype.dtype is not None
                and type(fortran) is bool
                and type(data) is bytes
                and len(data) == math.prod(shape) * dtype.dtype.itemsize
            )
        except (TypeError, ValueError):
            valid = False
        if not valid:
            _refuse(f'numpy array state {str(state)[:80]}')
        super().__setstate__((1, shape, dtype.dtype, fortran, data))

    # pickled and copied as the plain ndarray it stands for
    def __reduce_ex__(self, protocol):
        return np.asarray(self).__reduce_ex__(protocol)

    def __copy__(self):
        return np.array(self)

    def __deepcopy__(self, memo):
        return np.array(self)


def _reconstruct(cls, shape, code):
    # what ndarray.__reduce__ asks for before the array's state
    if cls is not _Array or shape != (0,) or code not in (b'b', 'b'):
        _refuse(f'numpy _reconstruct({cls!r}, {shape!r}, {code!r})')
    return np.ndarray.__new__(_Array, (0,), np.int8)


def _empty_bytes(*args):
    # protocol 2 pickles b'' (an empty array's data) as bytes()
    if args:
        _refuse(f'bytes{args!r}: only bytes() is allowed')
    return b''


def _scalar(dtype, data):
    if not (
        isinstance(dtype, _DType)
        and dtype.dtype is not None
        and type(data) is bytes
        and len(data) == dtype.dtype.itemsize
    ):
        _refuse(f'numpy scalar({dtype!r}, {str(data)[:40]})')
    return np.frombuffer(data, dtype.dtype)[0]


# Every Python object a checkpoint may ask the unpickler for, besides what
# torch allows on its own (tensors, storages, OrderedDict, torch.Size, ...),
# found by reading the pickles of real Runner checkpoints and published
# layouts (tests/test_safe_loading.py builds them and crafts a payload
# against each entry). None runs code chosen by the file.
SAFE_GLOBALS = [
    # message_hub: the loss/lr/time histories of a training checkpoint
    # (resume). It has no __setstate__; unpickling sets its attributes
    # (two arrays, an int, and its statistics methods through getattr).
    HistoryBuffer,
    _named(_history_buffer_getattr, 'builtins', 'getattr'),
    # numpy arrays, dtypes and scalars: inside HistoryBuffer, in
    # dataset_meta (palettes) and in older checkpoints' meta (seeds)
    _named(_DType, 'numpy', 'dtype'),
    _named(_empty_bytes, 'builtins', 'bytes'),
    _named(_Array, 'numpy', 'ndarray'),
    *(
        _named(_copy(function), f'numpy.{core}.multiarray', name)
        for core in ('core', '_core')
        for function, name in (
            (_reconstruct, '_reconstruct'),
            (_scalar, 'scalar'),
        )
    ),
]


TORCH_LOAD_IS_SAFE = digit_version(torch.__version__) >= digit_version('2.6.0')


def allow_in_torch_load():
    """Register ``SAFE_GLOBALS`` for every ``torch.load`` of the process
    where ``weights_only`` is safe (torch >= 2.6; see the module
    docstring). Idempotent."""
    if TORCH_LOAD_IS_SAFE:
        torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _allowlist():
    """The context of one of our loads. torch >= 2.6: registered again,
    since another caller may have cleared it (and ``safe_globals``' exit
    removes what it added); older torch: allowed only inside the load."""
    allow_in_torch_load()
    return (
        contextlib.nullcontext()
        if TORCH_LOAD_IS_SAFE
        else torch.serialization.safe_globals(SAFE_GLOBALS)
    )


# Words of torch's restricted unpickler (and of the stand-ins above) when it
# refuses an object, lower-cased.
_REFUSALS = (
    'unsupported',
    'blocked',
    'trying to',
    'can only',
    'not an allowed',
    'unrecognized',
    'persistent_load',
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do.

    The tools print it as one line and exit with status 2.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asked for Python objects outside the allowlist, or for
    more work than its size allows (the bounds in the module docstring)."""


class CorruptCheckpointError(CheckpointError):
    """A file that is not a readable checkpoint (truncated, damaged)."""


def _resave_hint(name):
    return (
        f'If you trust {name}, re-save its weights once: python -c '
        f"\"import torch; c = torch.load('{name}', weights_only=False); "
        f"torch.save({{'state_dict': c.get('state_dict', c)}}, "
        f"'trusted.pth')\" (keep c['meta'] too if it holds only plain "
        f'data); or, for a plain-data class of your own, allow it with '
        f'torch.serialization.add_safe_globals([TheClass])'
    )


class _Inert:
    """What the first, inert pass over a pickle builds for any object."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):  # SETITEMS on an OrderedDict ...
        pass

    def append(self, item):  # APPENDS on a list-like object
        pass

    extend = append


# Bounded reading. torch.save stores every zip member uncompressed (its
# writer's ``compress`` flag is off by default and torch.save never sets it,
# torch 1.6 to 2.14), and its pickle spends about 30-50 opcodes on a tensor.
# A re-zipped checkpoint (``zip -r``) has deflated members, which torch reads
# too; trained weights deflate by about 1.1 times, pickles and text by up to
# about 10 times.
# The archive's members may expand to at most this many times the file.
ZIP_EXPANSION_LIMIT = 32
# A member outside data/ (the pickle, version, byteorder ...) may expand to
# at most max(file size, this): the pickle is small next to the tensors.
SMALL_MEMBER_FLOOR = 1 << 20
# Opcodes a pickle may hold: PICKLE_OPS_BASE for meta, message_hub and
# dataset_meta, plus PICKLE_OPS_PER_RECORD per tensor record (a tensor and
# its share of the optimizer's param_groups take 33-48 in Runner checkpoints
# of a ResNet-50 with SGD or AdamW, one param group per parameter included).
# A legacy (non-zip) file does not list its records before its pickle: it is
# counted as one record per LEGACY_BYTES_PER_RECORD bytes of the file; its
# first three pickles (magic number, protocol, system info) are a few
# opcodes each.
PICKLE_OPS_BASE = 100_000
PICKLE_OPS_PER_RECORD = 64
LEGACY_BYTES_PER_RECORD = 4096
LEGACY_HEADER_OPS = 256
# GLOBAL opcodes (a pickler writes each global once, then memo references).
PICKLE_GLOBALS_LIMIT = 1024

# The opcodes torch's weights_only unpickler reads (protocol 2, which
# torch.save writes), with how their argument is laid out: a fixed number of
# bytes, or one of the kinds below.
_LEN1, _LEN4, _LINES, _PUT1, _PUT4, _GET1, _GET4, _STOP = range(-8, 0)
_OPCODE_ARGS = {
    **dict.fromkeys(b'\x81Rbaesu(t\x85\x86\x87N\x89\x88)]}\x8fQ', 0),
    ord('J'): 4,
    ord('K'): 1,
    ord('M'): 2,
    ord('G'): 8,
    0x80: 1,
    ord('X'): _LEN4,
    ord('U'): _LEN1,
    0x8A: _LEN1,
    ord('c'): _LINES,
    ord('q'): _PUT1,
    ord('r'): _PUT4,
    ord('h'): _GET1,
    ord('j'): _GET4,
    ord('.'): _STOP,
}


def _refuse_bound(name, what, allowed, rule):
    """One line for a file that asks for more work than its size allows:
    what it asks for, the limit and the rule that set it."""
    raise UnsafeCheckpointError(
        f'{name} was refused: {what}; the reader allows {allowed} ({rule}).'
        f' Nothing in the file was run. {_resave_hint(name)}'
    )


def _damaged(name, why):
    raise CorruptCheckpointError(
        f'{name} is truncated or damaged: {why}. If a run was killed '
        f'while writing it, use an earlier checkpoint'
    )


def _scan_pickle(data, start, max_ops, name, where):
    """Walk the opcodes of the pickle at ``data[start:]`` without building
    anything and return the position after its STOP. It stops at the first
    bound a pickle breaks: more than ``max_ops`` opcodes or
    ``PICKLE_GLOBALS_LIMIT`` globals, a memo slot written out of order (a
    pickler fills slots 0, 1, 2 ...; a far slot would size the C
    unpickler's memo array) or read before it is written, or an opcode
    torch's weights_only unpickler does not read.

    Args:
        data (bytes | mmap.mmap): the pickle's bytes (and what follows).
        start (int): where the pickle starts.
        max_ops (int): the opcode limit.
        name, where (str): the file and the member, for messages.
    """
    end, pos, ops, globals_seen, filled = len(data), start, 0, 0, 0
    args = _OPCODE_ARGS
    while pos < end:
        code = data[pos]
        kind = args.get(code)
        if kind is None:
            raise UnsafeCheckpointError(
                f'{name} was refused: {where} holds opcode {bytes([code])!r} '
                f"at byte {pos - start}, which torch's weights_only "
                f'unpickler does not read (torch.save writes pickle protocol'
                f' 2). Nothing in the file was run. {_resave_hint(name)}'
            )
        ops += 1
        if ops > max_ops:
            _refuse_bound(
                name,
                f'{where} holds over {max_ops} opcodes '
                f'(stopped at byte {pos - start})',
                f'{max_ops} opcodes',
                f'{PICKLE_OPS_BASE} + '
                f'{PICKLE_OPS_PER_RECORD} per tensor record; '
                f"{LEGACY_HEADER_OPS} for a legacy file's "
                'header pickles',
            )
        pos += 1
        if kind >= 0:
            pos += kind
        elif kind == _LEN4:
            pos += 4 + int.from_bytes(data[pos : pos + 4], 'little')
        elif kind == _LEN1:
            pos += 1 + (data[pos] if pos < end else 0)
        elif kind == _LINES:
            globals_seen += 1
            if globals_seen > PICKLE_GLOBALS_LIMIT:
                _refuse_bound(
                    name,
                    f'{where} names over '
                    f'{PICKLE_GLOBALS_LIMIT} globals (stopped at '
                    f'byte {pos - start - 1})',
                    f'{PICKLE_GLOBALS_LIMIT} globals',
                    'a pickler writes each global once',
                )
            module_end = data.find(b'\n', pos, end)
            pos = data.find(b'\n', module_end + 1, end) + 1
            if module_end < 0 or pos == 0:
                break
        elif kind == _STOP:
            return pos
        else:
            size = 1 if kind in (_PUT1, _GET1) else 4
            slot = int.from_bytes(data[pos : pos + size], 'little')
            pos += size
            if kind in (_PUT1, _PUT4):
                if slot > filled:
                    _refuse_bound(
                        name,
                        f'{where} writes memo slot {slot} at byte '
                        f'{pos - start - size - 1}',
                        f'slot {filled} next',
                        'a pickler fills memo slots in order',
                    )
                filled = max(filled, slot + 1)
            elif slot >= filled:
                _damaged(
                    name,
                    f'{where} reads memo slot {slot} at byte '
                    f'{pos - start - size - 1} before writing it',
                )
    _damaged(name, f'{where} is truncated ({end - start} bytes, no STOP)')


class _StorageSizes(pickle.Unpickler):
    """Collects ``(key, claimed bytes)`` of the storages a torch pickle
    names, building nothing but ``_Inert`` placeholders (no global of the
    file is imported or called). Runs after ``_scan_pickle`` bounded the
    pickle."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.claims = []
        self.placeholders = {}

    def find_class(self, module, name):
        key = (module, name)
        if key not in self.placeholders:
            self.placeholders[key] = type(
                name, (_Inert,), {'global_name': key}
            )
        return self.placeholders[key]

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel) in zip files, with the
        # view's metadata as a sixth item in the legacy format
        if (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == 'storage'
        ):
            size = _storage_itemsize(getattr(pid[1], 'global_name', ('', '')))
            if size is None or type(pid[4]) is not int:
                _refuse(f'storage {pid!r}')
            self.claims.append((str(pid[2]), pid[4] * size))
        return _Inert()


@functools.lru_cache(maxsize=256)
def _storage_itemsize(global_name):
    """Bytes per element of the storage class ``(module, name)`` a pickle
    names, or None for anything but a torch storage class."""
    module, name = global_name
    storage = (
        getattr(torch, name, None)
        if module in ('torch', 'torch.storage') and name.endswith('Storage')
        else None
    )
    with warnings.catch_warnings():  # TypedStorage is deprecated
        warnings.simplefilter('ignore', UserWarning)
        return (
            1
            if name == 'UntypedStorage'
            else getattr(getattr(storage, 'dtype', None), 'itemsize', None)
        )


def _storage_claims(data, name):
    """``(key, claimed bytes)`` of the storages the pickle ``data`` names."""
    try:
        unpickler = _StorageSizes(data)
        unpickler.load()
    except Exception as exc:  # noqa: BLE001  a malformed pickle
        raise CorruptCheckpointError(
            f'{name} is truncated or damaged: its pickle is damaged '
            f'({type(exc).__name__}: {exc})'
        ) from None
    return unpickler.claims


def _check_zip_bounds(archive, folder, size, name):
    """The zip rule, from the central directory alone (nothing is read or
    decompressed): every member is stored (as torch.save writes it) with
    equal declared and stored sizes, or deflated (a re-zipped checkpoint);
    all members together expand to at most ``ZIP_EXPANSION_LIMIT`` times
    the file, and a member outside ``data/`` to at most max(file size,
    ``SMALL_MEMBER_FLOOR``). Returns the number of tensor records."""
    records = total = 0
    small_limit = max(size, SMALL_MEMBER_FLOOR)
    seen = set()
    for info in archive.infolist():
        member = info.filename
        if member in seen:  # zipfile and torch may read different copies
            _damaged(name, f'its member {member!r} appears twice')
        seen.add(member)
        if info.compress_type not in (
            zipfile.ZIP_STORED,
            zipfile.ZIP_DEFLATED,
        ):
            _damaged(
                name,
                f'its member {member!r} is compressed with zip '
                f'method {info.compress_type}; torch reads stored and '
                f'deflated members only',
            )
        if (
            info.compress_type == zipfile.ZIP_STORED
            and info.file_size != info.compress_size
        ):
            _damaged(
                name,
                f'its stored member {member!r} declares '
                f'{info.file_size} bytes but holds {info.compress_size}',
            )
        if member.startswith(f'{folder}/data/'):
            records += 1
        elif info.file_size > small_limit:
            _refuse_bound(
                name,
                f'its member {member!r} expands to '
                f'{info.file_size} bytes from {info.compress_size}',
                f'{small_limit} bytes',
                'a member besides the '
                'tensor records expands to at most the file size '
                f'or {SMALL_MEMBER_FLOOR} bytes',
            )
        total += info.file_size
    if total > ZIP_EXPANSION_LIMIT * size:
        _refuse_bound(
            name,
            f'its members expand to {total} bytes from a {size}-byte file',
            f'{ZIP_EXPANSION_LIMIT * size} bytes',
            f'{ZIP_EXPANSION_LIMIT} times the file; '
            'torch.save stores members uncompressed, re-zipped '
            'weights expand about 1.1 times',
        )
    return records


def _check_storage_sizes(archive, folder, name, records):
    """Bound the pickle (``_scan_pickle``), then check its storages: torch
    2.5.1 takes a storage's size from the pickle and its bytes from the zip
    record, so a larger claim reads past the record's memory (torch 2.14
    checks this itself). Every claim must equal its record's size."""
    member = f'{folder}/data.pkl'
    data = archive.read(member)
    _scan_pickle(
        data,
        0,
        PICKLE_OPS_BASE + PICKLE_OPS_PER_RECORD * records,
        name,
        f'its pickle {member!r}',
    )
    sizes = {info.filename: info.file_size for info in archive.infolist()}
    for key, claimed in _storage_claims(data, name):
        record = sizes.get(f'{folder}/data/{key}')
        if record != claimed:
            raise CorruptCheckpointError(
                f'{name} is not a readable checkpoint: storage {key!r} '
                f'declares {claimed} bytes, its record holds {record}'
            )


def _file_bytes(source, position):
    """The bytes of ``source`` from ``position``: mapped where it is a
    file on disk (nothing is read into memory), else read."""
    with contextlib.suppress(
        AttributeError, OSError, ValueError, io.UnsupportedOperation
    ):
        if position == 0:
            return mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
    source.seek(position)
    return source.read()


def _check_legacy_bounds(source, position, name):
    """torch's legacy format: five pickles in a row (magic number, protocol,
    system info, the object, the storage keys), then each storage's 8-byte
    size and bytes, uncompressed. The first three may hold
    ``LEGACY_HEADER_OPS`` opcodes each, the others as many as a zip's pickle
    with one record per ``LEGACY_BYTES_PER_RECORD`` bytes of the file; the
    storages the object claims must fit in what follows the pickles (torch
    allocates them before it reads their bytes)."""
    data = _file_bytes(source, position)
    try:
        max_ops = PICKLE_OPS_BASE + PICKLE_OPS_PER_RECORD * (
            len(data) // LEGACY_BYTES_PER_RECORD
        )
        pos, main = 0, b''
        for index in range(5):
            if pos == len(data):  # not torch's format: torch names it
                break
            start = pos
            pos = _scan_pickle(
                data,
                start,
                max_ops if index > 2 else LEGACY_HEADER_OPS,
                name,
                f'its pickle {index + 1} of 5',
            )
            if index == 3:
                main = data[start:pos]
        claims = dict(_storage_claims(main, name)) if main else {}
        claimed = sum(claims.values())
        if claimed > len(data) - pos:
            _damaged(
                name,
                f'its storages claim {claimed} bytes, but '
                f'{len(data) - pos} follow its pickles',
            )
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _check_archive(source, name):
    """Refuse what torch must not open, before it opens it: neither a zip
    nor a pickle, a zip member outside the archive's folder, a TorchScript
    archive, more work than the file's size allows (``_check_zip_bounds``,
    ``_scan_pickle``), a storage larger than its record."""
    position = source.tell()
    head = source.read(4)
    source.seek(position)
    if head[:1] == b'\x80':  # pickle PROTO opcode: torch's legacy format
        try:
            _check_legacy_bounds(source, position, name)
        finally:
            source.seek(position)
        return 'pickle'
    if head != b'PK\x03\x04':
        raise CorruptCheckpointError(
            f'{name} is not a PyTorch checkpoint: it is neither a zip archive '
            f'(torch.save) nor a pickle (first bytes {head!r})'
        )
    try:
        size = source.seek(0, io.SEEK_END) - position
        source.seek(position)
        archive = zipfile.ZipFile(source)
        members = archive.namelist()
        folder = members[0].split('/')[0] if members else ''
        _check_members(members, folder, name)
        records = _check_zip_bounds(archive, folder, size, name)
        _check_storage_sizes(archive, folder, name, records)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zlib.error,
    ) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable checkpoint: the zip data is truncated '
            f'or damaged ({exc})'
        ) from None
    finally:
        source.seek(position)
    return 'zip'


def _check_members(members, folder, name):
    for member in members:
        parts = member.split('/')
        if (
            parts[0] != folder
            or len(parts) < 2
            or '..' in parts
            or '\\' in member
            or not all(parts[:-1])
        ):
            raise UnsafeCheckpointError(
                f'{name} was refused: its zip member {member!r} lies outside '
                f'the archive folder {folder!r}/. Nothing in the file was run'
            )
        if parts[-1] == 'constants.pkl' or 'code' in parts[1:-1]:
            raise UnsafeCheckpointError(
                f'{name} was refused: it is a TorchScript archive (it holds '
                f'{member}), which torch.load hands to torch.jit.load, and '
                f'that runs code from the file. Nothing in the file was run. '
                f'Load it with torch.jit.load only if you trust it'
            )


def torch_load_safely(source, name, map_location=None):
    """``torch.load(weights_only=True)`` with ``SAFE_GLOBALS``, clear errors.

    Args:
        source (str | file): a local path or a binary file object.
        name (str): how to name the file in messages (path or URL).
        map_location: as ``torch.load``.

    Raises:
        UnsafeCheckpointError: a TorchScript archive, a zip member outside
            the archive, or a pickle asking for an object outside the
            allowlist (nothing of it was executed).
        CorruptCheckpointError: truncated, damaged or not a checkpoint.
    """
    with (
        open(source, 'rb')
        if isinstance(source, str)
        else contextlib.nullcontext(source) as f
    ):
        container = _check_archive(f, name)
        try:
            with _allowlist():
                return torch.load(
                    f, map_location=map_location, weights_only=True
                )
        except Exception as exc:  # noqa: BLE001  any failure is named
            error = exc
    # torch words a refusal in several ways (and differently across
    # versions): the line after 'WeightsUnpickler error:', or (a blocked
    # module such as posix) a line of its own after a generic preamble.
    lines = [
        line.strip()
        for line in str(error)
        .split('WeightsUnpickler error:')[-1]
        .splitlines()
        if line.strip()
    ]
    refusal = next(
        (
            line
            for line in lines
            if any(phrase in line.lower() for phrase in _REFUSALS)
        ),
        None,
    )
    if isinstance(error, pickle.UnpicklingError) and refusal is not None:
        raise UnsafeCheckpointError(
            f'{name} was refused: besides tensors it asks the unpickler for '
            f'Python objects outside the allowlist of plain data, and loading'
            f' them could run code ({refusal}). Nothing in the file was run. '
            f'{_resave_hint(name)}'
        ) from None
    reason = lines[0] if lines else ''
    raise CorruptCheckpointError(
        f'{name} is not a readable checkpoint: the {container} data is '
        f'truncated or damaged ({type(error).__name__}: {reason}). If a '
        f'run was killed while writing it, use an earlier checkpoint'
    ) from None


def _safetensors_metadata(header_bytes, name):
    """The ``__metadata__`` of a safetensors header (no tensor data read)."""
    try:
        (length,) = struct.unpack('<Q', header_bytes[:8])
        header = json.loads(header_bytes[8 : 8 + length])
    except (struct.error, ValueError) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable safetensors file ({exc})'
        ) from None
    return header.get('__metadata__') or {}


def _with_metadata(tensors, metadata):
    return (
        {'meta': dict(metadata), 'state_dict': tensors}
        if metadata
        else tensors
    )


def read_safetensors(source, name, map_location=None):
    """Tensors of a ``.safetensors`` path or bytes, with its metadata kept.

    Returns:
        dict: ``{'meta': metadata, 'state_dict': tensors}``, or the bare
        tensors when the file has no metadata.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes
    from safetensors.torch import load_file

    device = map_location if isinstance(map_location, str) else 'cpu'
    try:
        if isinstance(source, (bytes, bytearray)):
            tensors = load_bytes(bytes(source))
            tensors = {k: v.to(device) for k, v in tensors.items()}
            header = bytes(source[: 8 + struct.unpack('<Q', source[:8])[0]])
        else:
            tensors = load_file(source, device=device)
            with open(source, 'rb') as f:
                size = struct.unpack('<Q', f.read(8))[0]
                f.seek(0)
                header = f.read(8 + size)
    except (SafetensorError, struct.error, OSError, ValueError) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable safetensors file: {exc}'
        ) from None
    return _with_metadata(tensors, _safetensors_metadata(header, name))


def read_local_file(path, map_location=None, name=None):
    """Read a local checkpoint (torch or ``.safetensors``) without code."""
    name = name or path
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {name}')
    if path.endswith('.safetensors'):
        return read_safetensors(path, name, map_location)
    return torch_load_safely(path, name, map_location)


def read_bytes(data, name, map_location=None):
    """Read a checkpoint held in memory (from a remote storage backend)."""
    if urlparse(name).path.endswith('.safetensors'):
        return read_safetensors(data, name, map_location)
    with io.BytesIO(data) as buffer:
        return torch_load_safely(buffer, name, map_location)
