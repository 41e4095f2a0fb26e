"""The one checkpoint reader: mmengine's ``CheckpointLoader``, no pickle code.

mmengine 0.10.7 reads every checkpoint it fetches with ``torch.load``
without ``weights_only`` (unsafe on torch < 2.6), and its http loader goes
through torch hub with ``weights_only=False`` on every torch: ``load_from``,
``--resume``, ``init_cfg`` (``PretrainedInit``), ``load_checkpoint`` and so
mmdet's ``init_detector`` and mmseg's ``init_model``. ``install()`` (called
when ``mmmetaformer`` is imported) re-registers the loader of every path
scheme ``CheckpointLoader`` knows with one that fetches the file the same
way and reads it with ``torch.load(weights_only=True)`` and the short
allowlist ``SAFE_GLOBALS``. Whatever goes through ``CheckpointLoader`` is
then safe: our tools, our backbones' ``init_cfg``, and mmdet's and mmseg's
own tools once a config imports ``mmmetaformer`` (``custom_imports``).

Decisions:

* Before torch opens a zip, the archive is checked here: a TorchScript
  archive (a ``constants.pkl`` or a ``code/`` folder) is refused, since
  torch < 2.6 hands it to ``torch.jit.load`` even with ``weights_only=True``
  (CVE-2025-32434; torch >= 2.6 refuses it too, this stays as defence in
  depth), and so is a member outside the archive's one folder.
* numpy objects are rebuilt by value. ``SAFE_GLOBALS`` holds stand-ins
  under numpy's names (``numpy.dtype``, ``numpy.ndarray``, ``_reconstruct``
  and ``scalar`` of ``numpy.core`` and ``numpy._core``, so pickles of numpy
  1 and 2 both read): bool and numeric dtypes only, arrays from their bytes
  with ``np.frombuffer``. A file can therefore not choose object dtypes,
  dtype flags or memory layouts, which numpy's own ``__setstate__`` lets it
  do (a crafted ``scalar`` of an object dtype crashes the process). The
  stand-ins return placeholders that the reader swaps for the arrays after
  unpickling, so they are never registered process-wide.
* Fetching stays with ``CheckpointLoader``'s schemes. URLs are cached where
  mmengine's own http loader caches them (torch hub's ``checkpoints``
  folder), with its progress bar. In a distributed run the first rank of
  each node downloads while the node's other ranks wait at a barrier.
* ``.safetensors`` files (from any scheme) are read with safetensors, and
  their string metadata is kept: ``{'meta': metadata, 'state_dict':
  tensors}``. Without metadata the tensors come back as a flat dict.
* A refused file raises ``UnsafeCheckpointError`` before any of its code
  could run; the message names the file, the object it asked for and how
  to re-save a trusted file. Anything else torch cannot read (truncated,
  damaged, not a checkpoint) raises ``CorruptCheckpointError``.
"""
import contextlib
import io
import json
import math
import os
import os.path as osp
import pickle
import struct
import types
import zipfile
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import barrier, get_local_rank
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader


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
    _refuse(f'getattr({owner!r}, {name!r}): not one of HistoryBuffer\'s '
            f'statistics methods')


# Bool and numeric dtypes as numpy pickles name them ('f8', 'b1', 'u1' ...)
_NUMPY_CODES = frozenset(
    np.dtype(code).str[1:]
    for code in '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat'])
# The state numpy pickles for every such dtype, after its byte order.
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


class _DType:
    """``numpy.dtype(code, False, True)`` then its state: a bool or numeric
    type and a byte order, nothing else (no fields, sizes or flags)."""

    def __init__(self, code=None, align=False, copy=True):
        if code not in _NUMPY_CODES or (align, copy) != (False, True):
            _refuse(f'numpy dtype({code!r}, {align!r}, {copy!r}): only bool '
                    f'and numeric dtypes are allowed')
        self.code, self.dtype = code, None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8
                and state[0] == 3 and state[1] in ('<', '>', '|', '=')
                and state[2:] == _PLAIN_DTYPE_STATE):
            _refuse(f'numpy dtype state {state!r}')
        self.dtype = np.dtype(self.code).newbyteorder(state[1])


class _Array:
    """``numpy.ndarray`` from its state ``(1, shape, dtype, fortran,
    bytes)``: ``np.frombuffer`` of exactly ``prod(shape)`` items."""

    def __init__(self, *args):
        if args:
            _refuse('numpy.ndarray(...) call')
        self.array = None

    def __setstate__(self, state):
        try:
            version, shape, dtype, fortran, data = state
            valid = (version == 1 and isinstance(shape, tuple)
                     and all(type(n) is int and n >= 0 for n in shape)
                     and isinstance(dtype, _DType) and dtype.dtype is not None
                     and type(fortran) is bool and type(data) is bytes
                     and len(data) == math.prod(shape) * dtype.dtype.itemsize)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            _refuse(f'numpy array state {str(state)[:80]}')
        self.array = np.frombuffer(data, dtype.dtype).reshape(
            shape, order='F' if fortran else 'C').copy(order='K')


def _reconstruct(cls, shape, code):
    # what ndarray.__reduce__ asks for before the array's state
    if cls is not _Array or shape != (0, ) or code not in (b'b', 'b'):
        _refuse(f'numpy _reconstruct({cls!r}, {shape!r}, {code!r})')
    return _Array()


def _empty_bytes(*args):
    # protocol 2 pickles b'' (an empty array's data) as bytes()
    if args:
        _refuse(f'bytes{args!r}: only bytes() is allowed')
    return b''


def _scalar(dtype, data):
    if not (isinstance(dtype, _DType) and dtype.dtype is not None
            and type(data) is bytes and len(data) == dtype.dtype.itemsize):
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
    *(_named(_copy(function), f'numpy.{core}.multiarray', name)
      for core in ('core', '_core')
      for function, name in ((_reconstruct, '_reconstruct'),
                             (_scalar, 'scalar'))),
]


def _numpy_values(obj, seen):
    """``obj`` with the numpy stand-ins replaced by their values, in place
    where the container allows it."""
    if isinstance(obj, (_Array, _DType)):
        value = obj.array if isinstance(obj, _Array) else obj.dtype
        if value is None:
            _refuse(f'numpy {type(obj).__name__} without its state')
        return value
    if isinstance(obj, (str, bytes, int, float, torch.Tensor)) or \
            id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, tuple):
        values = tuple(_numpy_values(item, seen) for item in obj)
        if any(a is not b for a, b in zip(values, obj)):
            return type(obj)(values) if type(obj) is tuple else \
                type(obj)(*values)  # torch.Size, named tuples
        return obj
    if isinstance(obj, list):
        obj[:] = [_numpy_values(item, seen) for item in obj]
    items = obj if isinstance(obj, dict) else vars(obj) if isinstance(
        obj, HistoryBuffer) else {}
    for key, value in items.items():
        items[key] = _numpy_values(value, seen)
    return obj


# Words of torch's restricted unpickler (and of the stand-ins above) when it
# refuses an object, lower-cased.
_REFUSALS = ('unsupported', 'blocked', 'trying to', 'can only',
             'not an allowed', 'unrecognized', 'persistent_load')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do.

    The tools print it as one line and exit with status 2.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asked for Python objects outside the allowlist."""


class CorruptCheckpointError(CheckpointError):
    """A file that is not a readable checkpoint (truncated, damaged)."""


def _resave_hint(name):
    return (f"If you trust {name}, re-save its weights once: python -c "
            f"\"import torch; c = torch.load('{name}', weights_only=False); "
            f"torch.save({{'state_dict': c.get('state_dict', c)}}, "
            f"'trusted.pth')\" (keep c['meta'] too if it holds only plain "
            f'data); or, for a plain-data class of your own, allow it with '
            f'torch.serialization.add_safe_globals([TheClass])')


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


class _StorageSizes(pickle.Unpickler):
    """Collects ``(key, claimed bytes)`` of the storages a torch pickle
    names, building nothing but ``_Inert`` placeholders (no global of the
    file is imported or called)."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.claims = []

    def find_class(self, module, name):
        return type(name, (_Inert, ), {'global_name': (module, name)})

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage':
            module, name = getattr(pid[1], 'global_name', ('', ''))
            storage = getattr(torch, name, None) if module in (
                'torch', 'torch.storage') else None
            size = 1 if name == 'UntypedStorage' else getattr(
                getattr(storage, 'dtype', None), 'itemsize', None)
            if size is None or type(pid[4]) is not int:
                _refuse(f'storage {pid!r}')
            self.claims.append((str(pid[2]), pid[4] * size))
        return _Inert()


def _check_storage_sizes(archive, folder, name):
    """torch 2.5.1 takes a storage's size from the pickle and its bytes from
    the zip record: a larger claim reads past the record's memory (torch
    2.14 checks this itself). Every claim must equal its record's size."""
    sizes = {info.filename: info.file_size for info in archive.infolist()}
    try:
        unpickler = _StorageSizes(archive.read(f'{folder}/data.pkl'))
        unpickler.load()
    except Exception as exc:  # noqa: BLE001  a malformed pickle
        raise CorruptCheckpointError(
            f'{name} is not a readable checkpoint: its pickle is damaged '
            f'({type(exc).__name__}: {exc})') from None
    for key, claimed in unpickler.claims:
        record = sizes.get(f'{folder}/data/{key}')
        if record != claimed:
            raise CorruptCheckpointError(
                f'{name} is not a readable checkpoint: storage {key!r} '
                f'declares {claimed} bytes, its record holds {record}')


def _check_archive(source, name):
    """Refuse what torch must not open: neither a zip nor a pickle, a zip
    member outside the archive's folder, a TorchScript archive, a storage
    larger than its record."""
    position = source.tell()
    head = source.read(4)
    source.seek(position)
    if head[:1] == b'\x80':  # pickle PROTO opcode: torch's legacy format
        return 'pickle'
    if head != b'PK\x03\x04':
        raise CorruptCheckpointError(
            f'{name} is not a PyTorch checkpoint: it is neither a zip archive '
            f'(torch.save) nor a pickle (first bytes {head!r})')
    try:
        archive = zipfile.ZipFile(source)
        members = archive.namelist()
        folder = members[0].split('/')[0] if members else ''
        _check_members(members, folder, name)
        _check_storage_sizes(archive, folder, name)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable checkpoint: the zip data is truncated '
            f'or damaged ({exc})') from None
    finally:
        source.seek(position)
    return 'zip'


def _check_members(members, folder, name):
    for member in members:
        parts = member.split('/')
        if parts[0] != folder or len(parts) < 2 or '..' in parts or \
                '\\' in member or not all(parts[:-1]):
            raise UnsafeCheckpointError(
                f'{name} was refused: its zip member {member!r} lies outside '
                f'the archive folder {folder!r}/. Nothing in the file was run')
        if parts[-1] == 'constants.pkl' or 'code' in parts[1:-1]:
            raise UnsafeCheckpointError(
                f'{name} was refused: it is a TorchScript archive (it holds '
                f'{member}), which torch.load hands to torch.jit.load, and '
                f'that runs code from the file. Nothing in the file was run. '
                f'Load it with torch.jit.load only if you trust it')


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
    with open(source, 'rb') if isinstance(source, str) else \
            contextlib.nullcontext(source) as f:
        container = _check_archive(f, name)
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                loaded = torch.load(f, map_location=map_location,
                                    weights_only=True)
            return _numpy_values(loaded, set())
        except Exception as exc:  # noqa: BLE001  any failure is named
            error = exc
    # torch words a refusal in several ways (and differently across
    # versions): the line after 'WeightsUnpickler error:', or (a blocked
    # module such as posix) a line of its own after a generic preamble.
    lines = [line.strip() for line in str(error).split(
        'WeightsUnpickler error:')[-1].splitlines() if line.strip()]
    refusal = next((line for line in lines if any(
        phrase in line.lower() for phrase in _REFUSALS)), None)
    if isinstance(error, pickle.UnpicklingError) and refusal is not None:
        raise UnsafeCheckpointError(
            f'{name} was refused: besides tensors it asks the unpickler for '
            f'Python objects outside the allowlist of plain data, and loading'
            f' them could run code ({refusal}). Nothing in the file was run. '
            f'{_resave_hint(name)}') from None
    reason = lines[0] if lines else ''
    raise CorruptCheckpointError(
        f'{name} is not a readable checkpoint: the {container} data is '
        f'truncated or damaged ({type(error).__name__}: {reason}). If a '
        f'run was killed while writing it, use an earlier checkpoint'
    ) from None


def _safetensors_metadata(header_bytes, name):
    """The ``__metadata__`` of a safetensors header (no tensor data read)."""
    try:
        (length, ) = struct.unpack('<Q', header_bytes[:8])
        header = json.loads(header_bytes[8:8 + length])
    except (struct.error, ValueError) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable safetensors file ({exc})') from None
    return header.get('__metadata__') or {}


def _with_metadata(tensors, metadata):
    return {'meta': dict(metadata), 'state_dict': tensors} if metadata \
        else tensors


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
            header = bytes(source[:8 + struct.unpack('<Q', source[:8])[0]])
        else:
            tensors = load_file(source, device=device)
            with open(source, 'rb') as f:
                size = struct.unpack('<Q', f.read(8))[0]
                f.seek(0)
                header = f.read(8 + size)
    except (SafetensorError, struct.error, OSError, ValueError) as exc:
        raise CorruptCheckpointError(
            f'{name} is not a readable safetensors file: {exc}') from None
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


def fetch_url(url):
    """The local copy of ``url`` in torch hub's checkpoint cache.

    The first rank of each node downloads (into a temporary file that is
    renamed when complete); the node's other ranks wait at a barrier. A
    failed download is re-raised on every rank after the barrier, so no rank
    waits forever.
    """
    cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(cache_dir, osp.basename(urlparse(url).path))
    error = None
    if get_local_rank() == 0 and not osp.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        print_log(f'Downloading {url} to {path}', logger='current')
        try:
            torch.hub.download_url_to_file(url, path, progress=True)
        except Exception as exc:  # re-raised after the barrier
            error = exc
    barrier()
    if error is not None or not osp.isfile(path):
        raise CheckpointError(
            f'Could not download {url} ({error or "no file after download"}).'
            f' Download it by other means and pass the local file, or place '
            f'it at {path}')
    return path


# The scheme loaders. CheckpointLoader logs "Loads checkpoint by <name[10:]>
# backend", hence the ``load_from_`` names.


def load_from_local(filename, map_location=None):
    return read_local_file(filename, map_location)


def load_from_http(filename, map_location=None):
    return read_local_file(fetch_url(filename), map_location, name=filename)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend
    storage = get_file_backend(filename, backend_args={'backend': backend})
    return read_bytes(storage.get(filename), filename, map_location)


def load_from_torchvision(filename, map_location=None):
    name = filename.split('://', 1)[1]
    urls = mmengine_checkpoint.get_torchvision_models()
    if name not in urls:
        raise CheckpointError(f'{filename}: no torchvision model {name!r}')
    return load_from_http(urls[name], map_location)


def load_from_openmmlab(filename, map_location=None):
    name = filename.split('://', 1)[1]
    name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    urls = mmengine_checkpoint.get_external_models()
    if name not in urls:
        raise CheckpointError(f'{filename}: no OpenMMLab model {name!r}')
    url = urls[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    # mmengine keeps some models as files under its home directory
    return read_local_file(
        osp.join(mmengine_checkpoint._get_mmengine_home(), url), map_location,
        name=filename)


def load_from_mmcls(filename, map_location=None):
    name = filename[len('mmcls://'):]
    urls = mmengine_checkpoint.get_mmcls_models()
    if name not in urls:
        raise CheckpointError(f'{filename}: no mmcls model {name!r}')
    return mmengine_checkpoint._process_mmcls_checkpoint(
        load_from_http(urls[name], map_location))


def load_from_pavi(filename, map_location=None):
    from tempfile import TemporaryDirectory
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Install pavi to load checkpoints from pavi://')
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        local = osp.join(tmp_dir, model.name)
        model.download(local)
        return read_local_file(local, map_location, name=filename)


# Prefixes exactly as mmengine registers them, so ours replace its loaders.
SCHEMES = (
    ('', load_from_local),
    (('http://', 'https://'), load_from_http),
    ((r'(\S+\:)?s3://', r'(\S+\:)?petrel://'), load_from_ceph),
    (('modelzoo://', 'torchvision://'), load_from_torchvision),
    (('open-mmlab://', 'openmmlab://'), load_from_openmmlab),
    ('mmcls://', load_from_mmcls),
    ('pavi://', load_from_pavi),
)


def install():
    """Make ``CheckpointLoader`` read every scheme with the safe loaders."""
    for prefixes, loader in SCHEMES:
        CheckpointLoader.register_scheme(prefixes, loader, force=True)

