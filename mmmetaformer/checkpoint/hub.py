"""Checkpoints on the Hugging Face Hub, fetched through ``huggingface_hub``.

Two spellings reach a Hub file:

* ``hf-hub:ORG/NAME[@REVISION][/PATH/IN/REPO]`` (timm's prefix). The repo
  is the first two ``/``-separated parts; ``@REVISION`` (a branch, tag or
  commit hash; default ``main``) ends at the next ``/``, written
  percent-encoded where it holds one (``refs%2Fpr%2F1``, as in Hub URLs);
  everything after it is the file's path in the repo. Repo names cannot
  hold ``@`` or ``/``, so every id splits one way. Without a path the
  repo's ``model.safetensors`` is read, or, where the repo has none, its
  ``pytorch_model.bin`` (timm's two names) or ``model.pth``:
  ``hf-hub:timm/caformer_s18.sail_in22k_ft_in1k``,
  ``hf-hub:timm/caformer_s18.sail_in1k@main/model.safetensors``,
  ``hf-hub:sail/dl/caformer/caformer_s18.pth``.
* ``https://huggingface.co/ORG/NAME/resolve/REVISION/PATH`` URLs (also
  ``hf.co`` and the host of ``HF_ENDPOINT``), the form of the authors'
  links.

Both go through ``hf_hub_download``, so the Hub's cache (``HF_HOME``,
``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE=1``), mirrors
(``HF_ENDPOINT``) and tokens (``HF_TOKEN``, ``hf auth login``) work as
they do for timm and transformers. The file is then read by the code-free
reader (``reader.read_local_file``), safetensors first. A file that is not
there (offline and not cached, no such repo, revision or file) raises
``HubCheckpointError`` with one line naming the repo and the file and the
command that fetches it; the tools print it and exit with status 2.
Offline mode fails at once; online, huggingface_hub retries an unreachable
endpoint with backoff before giving up, so set ``HF_HUB_OFFLINE=1`` on a
machine without network.

``huggingface_hub`` is a runtime dependency (``requirements/runtime.txt``):
the MetaFormer baselines' weights (every ConvFormer, CAFormer,
PoolFormerV2, IdentityFormer and RandFormer config's ``init_cfg``) and
timm's are Hub files; it is pure Python and timm brings it anyway. It is
imported on first use.
"""

import importlib.util
import os
import os.path as osp
from urllib.parse import unquote, urlparse

from mmengine.dist import barrier, get_local_rank, is_distributed
from mmengine.logging import print_log

from .reader import CheckpointError

HUB_PREFIX = 'hf-hub:'
# Read in this order from a repo named without a file: timm's two names
# (``timm.models._hub.load_state_dict_from_hf``), then a plain torch file.
DEFAULT_FILES = ('model.safetensors', 'pytorch_model.bin', 'model.pth')
HUB_HOSTS = ('huggingface.co', 'www.huggingface.co', 'hf.co')
SYNTAX = 'hf-hub:ORG/NAME[@REVISION][/FILE]'


class HubCheckpointError(CheckpointError):
    """A Hub checkpoint that cannot be had: bad id, no such repo, revision
    or file, or offline without the file in the cache."""


def local_rank():
    """This process's rank on its node: 0 outside a distributed run, else
    ``LOCAL_RANK`` as torchrun and mmengine's slurm set-up set it.

    mmengine's ``get_local_rank`` needs a local process group that nothing
    in mmengine 0.10.7 creates (``init_local_group`` is never called), so in
    a distributed run it raises; where neither is there, every rank counts
    as its node's first and fetches for itself (the caches' files are
    written whole and renamed, so concurrent fetches are safe).
    """
    if not is_distributed():
        return 0
    if 'LOCAL_RANK' in os.environ:
        return int(os.environ['LOCAL_RANK'])
    try:
        return get_local_rank()
    except RuntimeError:
        return 0


def is_hub_checkpoint(name):
    """Whether ``name`` is fetched through ``huggingface_hub`` (an
    ``hf-hub:`` id or a Hub ``resolve`` URL), not read from a path."""
    name = str(name)
    return name.startswith(HUB_PREFIX) or parse_hub_url(name) is not None


def parse_hub_id(name):
    """``hf-hub:ORG/NAME[@REVISION][/FILE]`` -> ``(repo_id, revision,
    filename)``; ``revision`` and ``filename`` are None where not given.

    Raises:
        HubCheckpointError: not of that form.
    """
    spec = name[len(HUB_PREFIX) :]
    parts = spec.split('/', 2)
    bad = None
    if len(parts) < 2 or not parts[0] or not parts[1]:
        bad = 'it names no ORG/NAME repository'
    elif '@' in parts[0]:
        bad = "'@REVISION' goes after the repository's name"
    elif len(parts) == 3 and not parts[2].strip('/'):
        bad = 'the file after the last / is empty'
    else:
        repo_name, at, revision = parts[1].partition('@')
        if not repo_name or (at and not revision):
            bad = 'the repository name or revision around @ is empty'
    if bad:
        raise HubCheckpointError(
            f'{name!r} is not a Hub checkpoint id ({bad}); write {SYNTAX}, '
            "e.g. 'hf-hub:timm/caformer_s18.sail_in1k' or "
            "'hf-hub:sail/dl/caformer/caformer_s18.pth'"
        )
    filename = parts[2] if len(parts) == 3 else None
    return f'{parts[0]}/{repo_name}', unquote(revision) or None, filename


def _endpoint_host():
    """The host of ``HF_ENDPOINT`` (a mirror), as huggingface_hub read it."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return urlparse(constants.ENDPOINT).netloc or None


def parse_hub_url(url):
    """A Hub file URL -> ``(repo_id, revision, filename, repo_type)``, or
    None for any other string.

    ``https://huggingface.co/[datasets/]ORG/NAME/resolve/REV/PATH``; the
    revision and path are percent-decoded as the Hub encodes them.
    """
    if not str(url).startswith(('https://', 'http://')):
        return None
    parsed = urlparse(url)
    if parsed.netloc not in HUB_HOSTS:
        endpoint = _endpoint_host() if parsed.netloc else None
        if endpoint is None or parsed.netloc != endpoint:
            return None
    parts = parsed.path.strip('/').split('/')
    repo_type = None
    if parts and parts[0] == 'datasets':
        repo_type, parts = 'dataset', parts[1:]
    if 'resolve' not in parts:
        return None
    at = parts.index('resolve')
    if at not in (1, 2) or len(parts) < at + 3:
        return None
    filename = unquote('/'.join(parts[at + 2 :]))
    return ('/'.join(parts[:at]), unquote(parts[at + 1]), filename, repo_type)


def _cli():
    """The download command as the installed huggingface_hub spells it
    (``hf`` since 0.34; ``huggingface-cli`` before)."""
    try:
        found = importlib.util.find_spec('huggingface_hub.cli.hf')
    except ImportError:
        found = None
    return 'hf' if found else 'huggingface-cli'


def _download_command(repo_id, filename, revision, repo_type):
    command = f'{_cli()} download {repo_id} {filename}'
    if revision and revision != 'main':
        command += f' --revision {revision}'
    if repo_type == 'dataset':
        command += ' --repo-type dataset'
    return command


def _hub_errors():
    """huggingface_hub's exception classes (``errors`` since 0.24, re-
    exported from ``utils`` in every version)."""
    try:
        from huggingface_hub import errors
    except ImportError:
        from huggingface_hub import utils as errors
    return errors


def _try_files(
    name, repo_id, revision, filenames, repo_type, local_files_only
):
    """The local path of the first of ``filenames`` the repo has.

    Raises:
        HubCheckpointError: none of them could be had, saying why.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise HubCheckpointError(
            f'{name} is on the Hugging Face Hub; install huggingface_hub '
            '(a dependency of mmmetaformer) to fetch it'
        ) from None
    errors = _hub_errors()
    shown = revision or 'main'
    offline = local_files_only or bool(constants.HF_HUB_OFFLINE)
    absent_remotely, not_cached = [], []
    for filename in filenames:
        try:
            return hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                repo_type=repo_type,
                local_files_only=local_files_only,
                library_name='mmmetaformer',
            )
        except errors.LocalEntryNotFoundError:
            # offline, or the Hub could not be reached, and not cached
            not_cached.append(filename)
        except errors.GatedRepoError:
            raise HubCheckpointError(
                f'{name}: {repo_id} is a gated repository; accept its terms '
                f'on its page and set HF_TOKEN (or run `{_cli()} auth '
                'login`)'
            ) from None
        except errors.RepositoryNotFoundError:
            raise HubCheckpointError(
                f'{name}: no repository {repo_id} on {constants.ENDPOINT} '
                f'(file {filename}); check the name, or, for a private '
                f'repository, set HF_TOKEN (or run `{_cli()} auth '
                'login`)'
            ) from None
        except errors.RevisionNotFoundError:
            raise HubCheckpointError(
                f'{name}: {repo_id} has no revision {shown!r} (file '
                f'{filename}); name a branch, tag or commit of it after '
                '@'
            ) from None
        except errors.EntryNotFoundError:
            absent_remotely.append(filename)
        except (errors.HfHubHTTPError, OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()
            raise HubCheckpointError(
                f'{name}: could not fetch {filename} of {repo_id} (revision '
                f'{shown}): {reason[0] if reason else type(exc).__name__}'
            ) from None
    if len(filenames) == 1:
        listed, absent = f'{filenames[0]} of {repo_id}', 'is not'
    else:
        listed = f'none of {", ".join(filenames)} of {repo_id}'
        absent = 'is'
    first = (not_cached or filenames)[0]
    command = _download_command(repo_id, first, revision, repo_type)
    cache = constants.HF_HUB_CACHE
    if not_cached and offline:
        raise HubCheckpointError(
            f'{name}: {listed} (revision {shown}) {absent} in the Hugging '
            f'Face cache {cache} and HF_HUB_OFFLINE is set; run '
            f'`{command}` where there is network (same HF_HOME), or unset '
            'HF_HUB_OFFLINE'
        )
    if not_cached:
        raise HubCheckpointError(
            f'{name}: could not reach {constants.ENDPOINT} and {listed} '
            f'(revision {shown}) {absent} in the Hugging Face cache {cache}; '
            f'check the network or HF_ENDPOINT (a mirror), or run '
            f'`{command}` elsewhere into the same HF_HOME and set '
            'HF_HUB_OFFLINE=1'
        )
    raise HubCheckpointError(
        f'{name}: {repo_id} (revision {shown}) has no file '
        f'{" or ".join(filenames)}; name the file: '
        f'hf-hub:{repo_id}/FILE'
    )


def fetch_hub_file(name):
    """The local path (in the Hub's cache) of the Hub checkpoint ``name``.

    ``name`` is an ``hf-hub:`` id or a Hub ``resolve`` URL. The first rank
    of each node downloads while the node's other ranks wait at a barrier,
    then take the file from the cache; an error is raised on every rank
    after the barrier, so no rank waits forever.

    Raises:
        HubCheckpointError: see ``_try_files``.
    """
    url = parse_hub_url(name)
    if url is not None:
        repo_id, revision, filename, repo_type = url
        filenames = (filename,)
    else:
        repo_id, revision, filename = parse_hub_id(name)
        repo_type = None
        filenames = (filename,) if filename else DEFAULT_FILES
    error, path = None, None
    if local_rank() == 0:
        print_log(f'Fetching {name} through huggingface_hub', logger='current')
        try:
            path = _try_files(
                name,
                repo_id,
                revision,
                filenames,
                repo_type,
                local_files_only=False,
            )
        except HubCheckpointError as exc:  # re-raised after the barrier
            error = exc
    barrier()
    if error is not None:
        raise error
    if path is None:  # the node's first rank has put it in the cache
        path = _try_files(
            name,
            repo_id,
            revision,
            filenames,
            repo_type,
            local_files_only=True,
        )
    return path


def hub_checkpoint_name(name, path):
    """How messages name a Hub checkpoint: the id with the file read."""
    if name.startswith(HUB_PREFIX) and parse_hub_id(name)[2] is None:
        return f'{name} ({osp.basename(path)})'
    return name
