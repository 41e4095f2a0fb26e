"""Read checkpoints safely and load them into a backbone strictly.

Reading never runs code: ``.safetensors`` go through safetensors and
everything else through ``torch.load(weights_only=True)``. URLs are
downloaded once into torch's hub cache.

Loading is strict with two named exceptions:

* classifier leftovers (``head.*`` and the final ``norm.*``) in the
  checkpoint are expected when an ImageNet classifier feeds a backbone;
* the backbone's *new layers* (output norms, ConvMixer's pyramid adapter)
  may be absent from the checkpoint, or present in it for outputs the
  backbone does not emit.

Any other missing, unexpected or shape-mismatched key raises
``CheckpointMismatchError`` listing them all.
"""
import os
import os.path as osp
import pickle
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log

from .formats import (CLASSIFIER_PREFIXES, split_prefix, to_native,
                      unwrap_checkpoint)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the backbone."""


def _is_url(path):
    return urlparse(str(path)).scheme in ('http', 'https')


def _local_path(checkpoint):
    """The local file for a path or URL (downloading URLs once)."""
    if _is_url(checkpoint):
        cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(cache_dir, exist_ok=True)
        filename = osp.join(cache_dir, osp.basename(urlparse(checkpoint).path))
        if not osp.exists(filename):
            print_log(f'Downloading {checkpoint} to {filename}',
                      logger='current')
            try:
                torch.hub.download_url_to_file(checkpoint, filename)
            except Exception as exc:
                raise RuntimeError(
                    f'Could not download {checkpoint} ({exc}). Download it '
                    f'by other means and pass the local file as '
                    f'init_cfg.checkpoint, or place it at {filename}.'
                ) from exc
        return filename
    path = osp.expanduser(str(checkpoint))
    if not osp.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {checkpoint}')
    return path


def read_checkpoint(checkpoint):
    """Load a checkpoint path or URL into Python objects without running code.

    Raises:
        FileNotFoundError: the path does not exist.
        RuntimeError: the file holds pickled objects other than tensors and
            plain containers (refused, since unpickling could run code).
    """
    path = _local_path(checkpoint)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(
            f'{checkpoint} holds pickled Python objects besides tensors, and '
            f'loading it could run code, so it was refused '
            f'(torch.load weights_only=True). If you trust the file, re-save '
            f'just its state dict: torch.save(torch.load(path, '
            f"weights_only=False)['state_dict'], new_path). Cause: {exc}"
        ) from exc


def _shorten(keys, limit=20):
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)'
                    if len(keys) > limit else '')


def load_pretrained(model, checkpoint, fmt='auto', prefix=None):
    """Load ``checkpoint`` (path or URL) into ``model`` strictly.

    Args:
        model (nn.Module): a backbone with ``new_layer_prefixes``.
        checkpoint (str): file path or URL.
        fmt (str): checkpoint format, or ``'auto'``.
        prefix (str | None): take only keys under this prefix (stripped)
            before conversion, as in mmengine's ``Pretrained``.

    Returns:
        dict: ``loaded``, ``format``, ``classifier_leftovers``,
        ``new_layers_missing``, ``new_layers_unused``, ``other_model_parts``.
    """
    raw = read_checkpoint(checkpoint)
    if prefix:
        state_dict, _ = unwrap_checkpoint(raw)
        raw, _ = split_prefix(state_dict, prefix)
        if not raw:
            raise CheckpointMismatchError(
                f"No key of {checkpoint} starts with prefix '{prefix}'")
    state_dict, fmt, other_parts = to_native(raw, fmt)
    own = model.state_dict()
    new_prefixes = tuple(getattr(model, 'new_layer_prefixes', ()))

    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    leftovers = [k for k in unexpected if k.startswith(CLASSIFIER_PREFIXES)]
    new_missing = [k for k in missing if new_prefixes and
                   k.startswith(new_prefixes)]
    new_unused = [k for k in unexpected if new_prefixes and
                  k.startswith(new_prefixes)]
    bad_missing = [k for k in missing if k not in new_missing]
    bad_unexpected = [
        k for k in unexpected if k not in leftovers and k not in new_unused
    ]
    if bad_missing or bad_unexpected or mismatched:
        problems = []
        if bad_missing:
            problems.append(f'missing in checkpoint ({len(bad_missing)}): '
                            f'{_shorten(bad_missing)}')
        if bad_unexpected:
            problems.append(f'not in the model ({len(bad_unexpected)}): '
                            f'{_shorten(bad_unexpected)}')
        if mismatched:
            problems.append(f'shape mismatch ({len(mismatched)}): '
                            f'{_shorten(mismatched)}')
        raise CheckpointMismatchError(
            f'Checkpoint {checkpoint} (format {fmt}) does not fit '
            f'{type(model).__name__}:\n  ' + '\n  '.join(problems) +
            '\nCheck the arch matches the weights, or pass the format '
            'explicitly.')

    to_load = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    report = dict(
        loaded=len(to_load),
        format=fmt,
        classifier_leftovers=leftovers,
        new_layers_missing=new_missing,
        new_layers_unused=new_unused,
        other_model_parts=other_parts)
    message = (f'Loaded {len(to_load)}/{len(own)} tensors into '
               f'{type(model).__name__} from {checkpoint} (format {fmt})')
    if leftovers:
        message += f'; ignored {len(leftovers)} classifier tensors'
    if other_parts:
        message += (f'; ignored {len(other_parts)} tensors of other model '
                    f'parts ({_shorten(other_parts, 5)})')
    if new_missing:
        message += (f'; {len(new_missing)} new-layer tensors keep their '
                    f'initialisation ({_shorten(new_missing, 8)})')
    if new_unused:
        message += (f'; {len(new_unused)} checkpoint tensors belong to '
                    f'outputs this backbone does not emit')
    print_log(message, logger='current')
    return report
