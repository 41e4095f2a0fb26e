"""The one checkpoint reader: mmengine's ``CheckpointLoader``, no pickle code.

mmengine 0.10.7 reads every checkpoint it fetches with
``torch.load(weights_only=False)``: ``load_from``, ``--resume``, ``init_cfg``
(``PretrainedInit``), ``load_checkpoint`` and so mmdet's ``init_detector`` and
mmseg's ``init_model``. Unpickling such a file runs whatever code it was
made to run. ``install()`` (called when ``mmmetaformer`` is imported)
re-registers the loader of every path scheme ``CheckpointLoader`` knows with
one that fetches the file the same way and then reads it with
``torch.load(weights_only=True)`` and the short allowlist ``SAFE_GLOBALS``.
Whatever goes through ``CheckpointLoader`` is then safe: our tools, our
backbones' ``init_cfg``, and mmdet's and mmseg's own tools once a config
imports ``mmmetaformer`` (``custom_imports``).

Decisions:

* Fetching stays with ``CheckpointLoader``'s schemes, there is no second
  fetcher. URLs are cached where mmengine's own http loader caches them
  (torch hub's ``checkpoints`` folder). In a distributed run the first rank
  of each node downloads while the node's other ranks wait at a barrier.
* ``.safetensors`` files (from any scheme) are read with safetensors, and
  their string metadata is kept: ``{'meta': metadata, 'state_dict':
  tensors}``. Without metadata the tensors come back as a flat dict.
* A file the restricted unpickler refuses raises ``UnsafeCheckpointError``
  before any of its code could run; the message names the file, the object
  it asked for and how to re-save a trusted file. A file that is not a
  readable checkpoint at all (truncated, corrupt, not a checkpoint) raises
  ``CorruptCheckpointError``.
* Files written by numpy 2 name ``numpy._core``; the allowlist holds the
  numpy 1.x objects this stack runs with, so such files are refused.
"""
import io
import json
import os
import os.path as osp
import pickle
import struct
import zipfile
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import barrier, get_local_rank
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

# The statistics methods HistoryBuffer registers for itself.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(owner, name):
    """``getattr`` as far as ``HistoryBuffer`` pickles need it.

    A pickled ``HistoryBuffer`` carries its statistics methods
    (``HistoryBuffer.min`` ...) as ``getattr(HistoryBuffer, 'min')``. The
    real ``getattr`` would reach any attribute of any allowed object, so
    the unpickler gets this stand-in under the name ``builtins.getattr``: it
    returns those methods and refuses everything else.
    """
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: getattr({owner!r}, {name!r}) is not one of '
        f"HistoryBuffer's statistics methods")


# torch's restricted unpickler finds allowed objects by module and name.
_history_buffer_getattr.__module__ = 'builtins'
_history_buffer_getattr.__name__ = 'getattr'

# Every Python object a checkpoint may ask the unpickler for, besides what
# torch allows on its own (tensors, storages, OrderedDict, torch.Size, ...).
# Each only rebuilds data; none runs code chosen by the file. Found by
# reading the pickles of real Runner checkpoints (tests/test_safe_loading.py
# builds them and the published layouts).
SAFE_GLOBALS = [
    # message_hub: the loss/lr/time histories of a training checkpoint
    # (resume). Unpickling sets its attributes (two ndarrays, an int, and
    # its statistics methods, fetched through the getattr stand-in).
    HistoryBuffer,
    _history_buffer_getattr,
    # numpy arrays, dtypes and scalars: inside HistoryBuffer, in
    # dataset_meta (palettes) and in older checkpoints' meta (seeds).
    np.core.multiarray._reconstruct,
    np.core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    # the unpickler builds a dtype's state only for allowlisted types, and
    # np.dtype('f8') is a numpy.dtypes.Float64DType
    *sorted({type(np.dtype(code)) for code in np.typecodes['All']},
            key=lambda cls: cls.__name__),
]

# Phrases of torch's restricted unpickler when it refuses an object
# (anything else it raises is a damaged file).
_REFUSALS = ('Unsupported global', 'is blocked', 'unrecognized function',
             'Can only', 'persistent_load', 'Unsupported operand')
# Phrases of torch's RuntimeErrors about a damaged file (zip reader,
# storages shorter than declared).
_DAMAGE = ('PytorchStreamReader', 'zip archive', 'central directory',
           'unexpected EOF', 'corrupt', 'bytes', 'storage')


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


def _describe_container(head):
    """'zip', 'pickle' or None (neither) from a file's first bytes."""
    if head.startswith(b'PK\x03\x04'):
        return 'zip'
    if head[:1] == b'\x80':  # pickle PROTO opcode: torch's legacy format
        return 'pickle'
    return None


def torch_load_safely(source, name, map_location=None):
    """``torch.load(weights_only=True)`` with ``SAFE_GLOBALS``, clear errors.

    Args:
        source (str | file): a local path or a binary file object.
        name (str): how to name the file in messages (path or URL).
        map_location: as ``torch.load``.

    Raises:
        UnsafeCheckpointError: the pickle asks for an object outside the
            allowlist (nothing of it was executed).
        CorruptCheckpointError: truncated, damaged or not a checkpoint.
    """
    if isinstance(source, str):
        with open(source, 'rb') as f:
            head = f.read(8)
    else:
        position = source.tell()
        head = source.read(8)
        source.seek(position)
    container = _describe_container(head)
    if container is None:
        raise CorruptCheckpointError(
            f'{name} is not a PyTorch checkpoint: it is neither a zip archive '
            f'(torch.save) nor a pickle (first bytes {head!r})')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(source, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words a refusal in several ways, on the first line after
        # 'WeightsUnpickler error:' or (a blocked module such as posix) on
        # a line of its own after a generic preamble.
        lines = [line.strip() for line in str(exc).split(
            'WeightsUnpickler error:')[-1].splitlines() if line.strip()]
        refusal = next((line for line in lines
                        if any(phrase in line for phrase in _REFUSALS)), None)
        reason = refusal or (lines[0] if lines else type(exc).__name__)
        if refusal is not None:
            raise UnsafeCheckpointError(
                f'{name} was refused: besides tensors it asks the unpickler '
                f'for Python objects outside the allowlist of plain data, '
                f'and loading them could run code ({reason}). Nothing in the '
                f'file was run. {_resave_hint(name)}') from None
        raise CorruptCheckpointError(
            f'{name} is not a readable checkpoint ({reason}); it may be '
            f'truncated or damaged') from None
    except RuntimeError as exc:
        if not any(phrase in str(exc) for phrase in _DAMAGE):
            raise  # e.g. a CUDA map_location on a machine without CUDA
        raise _damaged(name, container, exc) from None
    except (EOFError, ValueError, KeyError, struct.error,
            zipfile.BadZipFile) as exc:
        raise _damaged(name, container, exc) from None


def _damaged(name, container, exc):
    reason = str(exc).splitlines()[0] if str(exc) else ''
    return CorruptCheckpointError(
        f'{name} is not a readable checkpoint: the {container} data is '
        f'truncated or damaged ({type(exc).__name__}: {reason}). If a run '
        f'was killed while writing it, use an earlier checkpoint')


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
            torch.hub.download_url_to_file(url, path, progress=False)
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

