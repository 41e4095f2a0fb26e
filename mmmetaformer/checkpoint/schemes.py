"""Every path and URL scheme of mmengine's ``CheckpointLoader``, read safely.

mmengine 0.10.7 reads what it fetches with ``torch.load`` and no
``weights_only`` (unrestricted on torch < 2.6), and its http loader goes
through torch hub with ``weights_only=False`` on every torch. That covers
``load_from``, ``--resume``, ``init_cfg`` (``PretrainedInit``),
``load_checkpoint`` and so mmdet's ``init_detector`` and mmseg's
``init_model``. ``install()`` (run when ``mmmetaformer`` is imported)
re-registers each scheme with a loader that fetches the file as mmengine
does and reads it with ``reader.py``. Whatever goes through
``CheckpointLoader`` is then safe: our tools, our backbones' ``init_cfg``,
and mmdet's and mmseg's own tools once a config imports ``mmmetaformer``
(``custom_imports``).

URLs are cached where mmengine's http loader caches them (torch hub's
``checkpoints`` folder) and downloaded with torch hub's progress bar. Hugging
Face Hub files, ``hf-hub:ORG/NAME[@REVISION][/FILE]`` ids (a scheme of our
own) and ``https://huggingface.co/.../resolve/...`` URLs, go through
``huggingface_hub`` and its cache instead (``hub.py``). In a distributed run
the first rank of each node downloads while the node's other ranks wait at a
barrier.
"""

import os
import os.path as osp
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .hub import (
    HUB_PREFIX,
    fetch_hub_file,
    hub_checkpoint_name,
    local_rank,
    parse_hub_url,
)
from .reader import (
    CheckpointError,
    allow_in_torch_load,
    read_bytes,
    read_local_file,
)


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
    if local_rank() == 0 and not osp.isfile(path):
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
            f'it at {path}'
        )
    return path


def _model_url(filename, kind, urls, aliases=None):
    """The URL (or file) a named-model scheme (``torchvision://name``,
    ``open-mmlab://name``, ``mmcls://name``) stands for."""
    name = filename.split('://', 1)[1]
    name = (aliases or {}).get(name, name)
    if name not in urls:
        raise CheckpointError(f'{filename}: no {kind} model {name!r}')
    return urls[name]


# The scheme loaders. CheckpointLoader logs "Loads checkpoint by <name[10:]>
# backend", hence the ``load_from_`` names.


def load_from_local(filename, map_location=None):
    return read_local_file(filename, map_location)


def load_from_http(filename, map_location=None):
    if parse_hub_url(filename) is not None:  # the Hub's cache, not torch's
        return load_from_hf_hub(filename, map_location)
    return read_local_file(fetch_url(filename), map_location, name=filename)


def load_from_hf_hub(filename, map_location=None):
    path = fetch_hub_file(filename)
    return read_local_file(
        path, map_location, name=hub_checkpoint_name(filename, path)
    )


def load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend

    storage = get_file_backend(filename, backend_args={'backend': backend})
    return read_bytes(storage.get(filename), filename, map_location)


def load_from_torchvision(filename, map_location=None):
    url = _model_url(
        filename, 'torchvision', mmengine_checkpoint.get_torchvision_models()
    )
    return load_from_http(url, map_location)


def load_from_openmmlab(filename, map_location=None):
    url = _model_url(
        filename,
        'OpenMMLab',
        mmengine_checkpoint.get_external_models(),
        mmengine_checkpoint.get_deprecated_model_names(),
    )
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    # mmengine keeps some models as files under its home directory
    return read_local_file(
        osp.join(mmengine_checkpoint._get_mmengine_home(), url),
        map_location,
        name=filename,
    )


def load_from_mmcls(filename, map_location=None):
    url = _model_url(filename, 'mmcls', mmengine_checkpoint.get_mmcls_models())
    return mmengine_checkpoint._process_mmcls_checkpoint(
        load_from_http(url, map_location)
    )


def load_from_pavi(filename, map_location=None):
    from tempfile import TemporaryDirectory

    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError(
            'Install pavi to load checkpoints from pavi://'
        ) from None
    model = modelcloud.get(filename[len('pavi://') :])
    with TemporaryDirectory() as tmp_dir:
        local = osp.join(tmp_dir, model.name)
        model.download(local)
        return read_local_file(local, map_location, name=filename)


# Prefixes exactly as mmengine registers them, so ours replace its loaders;
# hf-hub: is ours.
SCHEMES = (
    ('', load_from_local),
    (('http://', 'https://'), load_from_http),
    (HUB_PREFIX, load_from_hf_hub),
    ((r'(\S+\:)?s3://', r'(\S+\:)?petrel://'), load_from_ceph),
    (('modelzoo://', 'torchvision://'), load_from_torchvision),
    (('open-mmlab://', 'openmmlab://'), load_from_openmmlab),
    ('mmcls://', load_from_mmcls),
    ('pavi://', load_from_pavi),
)


def install():
    """Make ``CheckpointLoader`` read every scheme with the safe loaders,
    and (torch >= 2.6) let any ``torch.load`` read Runner checkpoints."""
    allow_in_torch_load()
    for prefixes, loader in SCHEMES:
        CheckpointLoader.register_scheme(prefixes, loader, force=True)
