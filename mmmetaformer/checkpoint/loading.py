"""Read checkpoints safely and load them into a backbone strictly.

Reading goes through mmengine's ``CheckpointLoader`` (any path or URL
scheme), whose loaders ``schemes.install()`` made code-free: ``.safetensors``
through safetensors (metadata kept), everything else through
``torch.load(weights_only=True)`` with a short allowlist.

Loading is strict with two named exceptions:

* classifier leftovers (``head.*`` and the final ``norm.*``) in the
  checkpoint are expected when an ImageNet classifier feeds a backbone;
* the backbone's *new layers* (output norms, ConvMixer's pyramid adapter)
  may be absent from the checkpoint, or present in it for outputs the
  backbone does not emit.

Any other missing or unexpected key, and any entry that cannot stand for
the model's tensor (not a tensor, another shape, or a dtype that cannot
represent it: integers or bools for a float parameter) raises
``CheckpointMismatchError`` listing them all.
"""

from typing import NamedTuple

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .formats import (
    CLASSIFIER_PREFIXES,
    split_prefix,
    strip_ddp_prefix,
    to_native,
    unwrap_checkpoint,
)
from .reader import CheckpointError


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not fit the model."""


def read_checkpoint(checkpoint, map_location='cpu'):
    """Load a checkpoint path or URL into Python objects without running code.

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafeCheckpointError: the file holds pickled objects other than
            tensors and plain data (refused, since unpickling could run
            code).
        CorruptCheckpointError: the file is truncated or damaged.
    """
    return CheckpointLoader.load_checkpoint(
        str(checkpoint), map_location, logger='current'
    )


def _dtype_kind(dtype):
    if dtype.is_complex:
        return 'complex'
    if dtype.is_floating_point:
        return 'floating'
    return 'bool' if dtype == torch.bool else 'integer'


class StateDictFit(NamedTuple):
    """How a state dict fits a model's (``compare_state_dicts``).

    ``missing``: the model's keys the state dict lacks; ``unexpected``: its
    keys the model lacks; ``unfit``: ``'key (why)'`` for each shared key
    whose value cannot be copied into the model's tensor.
    """

    missing: list
    unexpected: list
    unfit: list

    @property
    def exact(self):
        return not (self.missing or self.unexpected or self.unfit)


def compare_state_dicts(own, state_dict, may_miss=()):
    """The one comparison of a state dict against a model's ``own``.

    An entry is unfit when it is not a tensor (mmengine would skip it with
    a log line and leave the initialisation), has another shape, or
    another kind of dtype (``load_state_dict`` would cast an int8 tensor
    into a float parameter); a lower float precision is fine. Keys ending
    in one of ``may_miss`` do not count as missing.
    """
    missing = [
        k
        for k in own
        if k not in state_dict
        and not (may_miss and k.endswith(tuple(may_miss)))
    ]
    unexpected = [k for k in state_dict if k not in own]
    unfit = []
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            unfit.append(f'{key} (not a tensor: {type(value).__name__})')
        elif value.shape != target.shape:
            unfit.append(
                f'{key} (checkpoint {tuple(value.shape)}, model '
                f'{tuple(target.shape)})'
            )
        elif _dtype_kind(value.dtype) != _dtype_kind(target.dtype):
            unfit.append(
                f'{key} (checkpoint {value.dtype}, model {target.dtype})'
            )
    return StateDictFit(missing, unexpected, unfit)


def _shorten(keys, limit=20):
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (
        f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    )


def load_pretrained(model, checkpoint, fmt='auto', prefix=None):
    """Load ``checkpoint`` into ``model`` strictly.

    Args:
        model (nn.Module): a backbone with ``new_layer_prefixes``.
        checkpoint (str | dict): file path or URL, or a checkpoint already
            in memory (a state dict, or a dict holding one, as read).
        fmt (str): checkpoint format, or ``'auto'``.
        prefix (str | None): take only keys under this prefix (stripped)
            before conversion, as in mmengine's ``Pretrained``.

    Returns:
        dict: ``loaded``, ``format``, ``classifier_leftovers``,
        ``new_layers_missing``, ``new_layers_unused``, ``other_model_parts``.
    """
    if isinstance(checkpoint, dict):
        raw, checkpoint = checkpoint, 'a checkpoint in memory'
    else:
        raw = read_checkpoint(checkpoint)
    if prefix:
        state_dict, _ = unwrap_checkpoint(raw)
        raw, _ = split_prefix(state_dict, prefix)
        if not raw:
            raise CheckpointMismatchError(
                f"No key of {checkpoint} starts with prefix '{prefix}'"
            )
    state_dict, fmt, other_parts = to_native(raw, fmt)
    own = model.state_dict()
    new_prefixes = tuple(getattr(model, 'new_layer_prefixes', ()))

    missing, unexpected, mismatched = compare_state_dicts(own, state_dict)
    leftovers = [k for k in unexpected if k.startswith(CLASSIFIER_PREFIXES)]
    new_missing = [
        k for k in missing if new_prefixes and k.startswith(new_prefixes)
    ]
    new_unused = [
        k for k in unexpected if new_prefixes and k.startswith(new_prefixes)
    ]
    bad_missing = [k for k in missing if k not in new_missing]
    bad_unexpected = [
        k for k in unexpected if k not in leftovers and k not in new_unused
    ]
    if bad_missing or bad_unexpected or mismatched:
        problems = []
        if bad_missing:
            problems.append(
                f'missing in checkpoint ({len(bad_missing)}): '
                f'{_shorten(bad_missing)}'
            )
        if bad_unexpected:
            problems.append(
                f'not in the model ({len(bad_unexpected)}): '
                f'{_shorten(bad_unexpected)}'
            )
        if mismatched:
            problems.append(
                f'shape or type mismatch ({len(mismatched)}): '
                f'{_shorten(mismatched)}'
            )
        raise CheckpointMismatchError(
            f'Checkpoint {checkpoint} (format {fmt}) does not fit '
            f'{type(model).__name__}:\n  '
            + '\n  '.join(problems)
            + '\nCheck the arch matches the weights, or pass the format '
            'explicitly.'
        )

    to_load = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    report = dict(
        loaded=len(to_load),
        format=fmt,
        classifier_leftovers=leftovers,
        new_layers_missing=new_missing,
        new_layers_unused=new_unused,
        other_model_parts=other_parts,
    )
    message = (
        f'Loaded {len(to_load)}/{len(own)} tensors into '
        f'{type(model).__name__} from {checkpoint} (format {fmt})'
    )
    if leftovers:
        message += f'; ignored {len(leftovers)} classifier tensors'
    if other_parts:
        message += (
            f'; ignored {len(other_parts)} tensors of other model '
            f'parts ({_shorten(other_parts, 5)})'
        )
    if new_missing:
        message += (
            f'; {len(new_missing)} new-layer tensors keep their '
            f'initialisation ({_shorten(new_missing, 8)})'
        )
    if new_unused:
        message += (
            f'; {len(new_unused)} checkpoint tensors belong to '
            f'outputs this backbone does not emit'
        )
    print_log(message, logger='current')
    return report


# Tensors a whole-model checkpoint may lack without changing what the model
# computes at evaluation: BatchNorm's step counter, read only when training
# with momentum=None (checkpoints from torch < 0.4.1 and some converters do
# not have it; the Semantic FPN head has 7). Nothing else is exempt; the
# data preprocessors' mean/std are non-persistent buffers, never in a state
# dict, so they need no exception.
HARMLESS_MISSING_SUFFIXES = ('.num_batches_tracked',)


def _first(keys, limit=5):
    keys = list(keys)
    return ', '.join(keys[:limit]) + (', ...' if len(keys) > limit else '')


def model_state_dict(checkpoint, name):
    """The state dict of a whole-model checkpoint, as mmengine reads it."""
    state_dict = (
        checkpoint.get('state_dict', checkpoint)
        if isinstance(checkpoint, dict)
        else checkpoint
    )
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(
            f'{name} holds a {type(state_dict).__name__}, not a state dict'
        )
    return strip_ddp_prefix(state_dict)


def check_model_fits(model, checkpoint, name):
    """Raise unless ``checkpoint`` holds exactly ``model``'s tensors, each a
    tensor of the parameter's shape and kind of dtype.

    For evaluation, where weights that did not load would silently be the
    random initialisation. ``checkpoint`` is a loaded checkpoint (a state
    dict, or a dict with ``state_dict``); a DDP ``module.`` prefix is
    stripped as mmengine does. Only ``HARMLESS_MISSING_SUFFIXES`` may be
    missing.

    Raises:
        CheckpointMismatchError: one line with the counts of missing,
            unexpected and unfit entries (``compare_state_dicts``) and the
            first few names.
    """
    state_dict = model_state_dict(checkpoint, name)
    own = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(
        own, state_dict, may_miss=HARMLESS_MISSING_SUFFIXES
    )
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of the model's {len(own)} tensors "
            f'are not in it ({_first(missing)})'
        )
    if unexpected:
        problems.append(
            f'{len(unexpected)} of its {len(state_dict)} '
            f'tensors are not in the model '
            f'({_first(unexpected)})'
        )
    if mismatched:
        problems.append(
            f'{len(mismatched)} cannot be loaded into the '
            f'model ({_first(mismatched, 3)})'
        )
    if problems:
        raise CheckpointMismatchError(
            f'{name} does not fit {type(model).__name__}: '
            + '; '.join(problems)
            + '. Refusing to evaluate weights that did '
            'not load; pass the checkpoint trained with this config.'
        )


def load_model_strictly(model, checkpoint, map_location='cpu'):
    """Read ``checkpoint`` safely, check it fits ``model`` exactly, load it.

    Returns:
        dict: the loaded checkpoint (for its ``meta``).
    """
    loaded = read_checkpoint(checkpoint, map_location)
    check_model_fits(model, loaded, checkpoint)
    # strict=False only lets HARMLESS_MISSING_SUFFIXES through (checked above)
    model.load_state_dict(model_state_dict(loaded, checkpoint), strict=False)
    return loaded
