"""Shared logic of ``tools/train.py``, ``tools/test.py`` and friends.

The tools accept detection and segmentation configs alike and dispatch on
``default_scope``. Every check here turns a user mistake into a
``LaunchError`` whose message names the bad value and the valid choices;
the tools print it without a traceback.
"""

import contextlib
import difflib
import importlib
import json
import os
import os.path as osp
import re
import sys

from mmengine.config import Config
from mmengine.logging import print_log

from mmmetaformer.datasets.images import ImageError

# default_scope -> (package to import, what it is for, toy generator kind)
SCOPES = {
    'mmdet': ('mmdet', 'detection', 'coco'),
    'mmseg': ('mmseg', 'segmentation', 'ade20k'),
}
TOY_GENERATOR = 'python tools/misc/make_toy_dataset.py'


class LaunchError(Exception):
    """A user-facing error: the tools print it and exit with status 2."""


def _closest(name, choices):
    match = difflib.get_close_matches(
        str(name), [str(c) for c in choices], n=1, cutoff=0.75
    )
    return match[0] if match else None


def add_data_and_launcher_options(parser):
    """The options ``train.py`` and ``test.py`` share: ``--strict-data``
    and mmengine's launchers (``--launcher``, ``--local-rank``)."""
    parser.add_argument(
        '--strict-data',
        action='store_true',
        help='refuse an annotation file with boxes mmdet would drop (nan, '
        'negative or under 1 px wide or high); by default they are counted '
        'in a warning',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def _runner_arguments():
    """A config's top-level keys mmengine's ``Runner`` reads: its keyword
    arguments, and ``compile``, which ``Runner.train`` reads from the
    config itself."""
    import inspect

    from mmengine.runner import Runner

    arguments = set(inspect.signature(Runner.__init__).parameters)
    return arguments - {'self'} | {'compile'}


def validate_cfg_options(cfg, options):
    """Reject ``--cfg-options`` keys that are likely typos.

    mmengine silently adds unknown keys, so ``optim_wrapper.optimizer.lrr``
    would be ignored. Every key's parents must exist; a leaf may be new
    unless it is a near-miss of an existing sibling (then it is a typo).
    A top-level argument of mmengine's ``Runner`` the config leaves out
    (``compile.backend=eager``, ``randomness.seed=0``) may be new whole.
    """
    root = cfg.to_dict() if isinstance(cfg, Config) else cfg
    for full_key in options:
        node, path = root, []
        parts = full_key.split('.')
        if parts[0] not in root and parts[0] in _runner_arguments():
            continue
        for depth, part in enumerate(parts):
            is_leaf = depth == len(parts) - 1
            if isinstance(node, (list, tuple)):
                if not part.isdigit() or int(part) >= len(node):
                    raise LaunchError(
                        f"--cfg-options key '{full_key}': "
                        f"'{'.'.join(path) or '<root>'}' is a list of "
                        f'{len(node)}; {part!r} is not a valid index'
                    )
                node = node[int(part)]
            elif isinstance(node, dict):
                if part not in node:
                    guess = _closest(part, node.keys())
                    where = '.'.join(path) or 'the config root'
                    if guess is not None:
                        raise LaunchError(
                            f"--cfg-options key '{full_key}': no key "
                            f"'{part}' under {where}; did you mean "
                            f"'{guess}'? Keys there: {sorted(node.keys())}"
                        )
                    if not is_leaf:
                        raise LaunchError(
                            f"--cfg-options key '{full_key}': no key "
                            f"'{part}' under {where}; keys there: "
                            f'{sorted(node.keys())}'
                        )
                    break  # a genuinely new leaf key
                node = node[part]
            else:
                raise LaunchError(
                    f"--cfg-options key '{full_key}': "
                    f"'{'.'.join(path)}' is a {type(node).__name__}, not a "
                    'dict or list'
                )
            path.append(part)


def load_config(path, cfg_options=None):
    """Load a config, check its scope and apply ``--cfg-options``.

    Returns:
        tuple: ``(cfg, scope)`` with ``scope`` in ``SCOPES``.
    """
    if not osp.isfile(path):
        hint = ''
        repo_configs = osp.join(
            osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
            'configs',
        )
        if osp.isdir(repo_configs):
            guess = _closest(
                osp.basename(path),
                sorted(
                    f for f in os.listdir(repo_configs) if f.endswith('.py')
                ),
            )
            if guess:
                hint = f' Did you mean configs/{guess}?'
        raise LaunchError(f'Config file not found: {path}.{hint}')
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:
        raise LaunchError(
            f'Cannot load config {path}: {type(exc).__name__}: {exc}'
        ) from exc
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise LaunchError(
            f'Config {path} has default_scope={scope!r}; these tools run '
            f"detection (default_scope='mmdet') and segmentation "
            f"(default_scope='mmseg') configs."
        )
    package = SCOPES[scope][0]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise LaunchError(
            f'Config {path} needs {package} for '
            f'{SCOPES[scope][1]}, which does not import: '
            f'{exc}. Run `make env`.'
        ) from exc
    if cfg_options:
        validate_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    return cfg, scope


def set_work_dir(cfg, work_dir, config_path):
    """``--work-dir``, else the config's, else ``work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join(
            './work_dirs', osp.splitext(osp.basename(config_path))[0]
        )


def check_data_roots(cfg, scope, dataloader_keys):
    """Fail early, naming the path, when a dataset's files are not there."""
    kind = SCOPES[scope][2]
    for key, dataset in _dataset_cfgs(cfg, dataloader_keys):
        root = dataset.get('data_root', '')
        ann_file = dataset.get('ann_file', '')
        if root and not osp.isdir(root):
            raise LaunchError(
                f"{key}: data_root '{root}' does not exist. Point "
                f'--cfg-options {key}.dataset.data_root=... at your dataset,'
                f' or make a small synthetic one there: {TOY_GENERATOR} '
                f'{kind} {root}'
            )
        if ann_file and not osp.isabs(ann_file):
            ann_file = osp.join(root, ann_file)
        if ann_file and not osp.exists(ann_file):
            raise LaunchError(
                f"{key}: annotation file '{ann_file}' does not exist under "
                f"data_root '{root}'. Make a synthetic dataset with: "
                f'{TOY_GENERATOR} {kind} {root}'
            )


def prepare_for_device(cfg, launcher):
    """CPU adaptations: BN instead of SyncBN, gloo for distributed runs."""
    import torch

    from mmmetaformer.engine import setup_cpu_distributed, sync_bn_to_bn

    if not torch.cuda.is_available():
        replaced = sync_bn_to_bn(cfg.model)
        if replaced:
            print_log(
                f'No GPU: replaced {replaced} SyncBN norm(s) by BN',
                logger='current',
            )
    cfg.launcher = launcher
    setup_cpu_distributed(cfg, launcher)


def check_ops_for(scope):
    """mmdet needs mmcv's compiled ops; fail with the fix if absent."""
    if scope != 'mmdet':
        return
    from .env_check import MMCVOpsMissingError, check_mmcv_ops

    try:
        check_mmcv_ops()
    except MMCVOpsMissingError as exc:
        raise LaunchError(str(exc)) from exc


def check_backbone_builds(cfg):
    """Build the config's backbone, if it is one of ours, on the ``meta``
    device (no memory, no weights read) so that its own argument checks
    (``out_indices=(7,)``, ``arch='s99'``, ``frozen_stages=9``, an unknown
    key ...) reach the user as one line naming the value, instead of a
    traceback from deep inside the runner. Only the errors our backbones
    raise from their arguments (``ValueError``, ``TypeError``) are mapped.
    """
    import torch

    from mmmetaformer.registry import MODELS

    backbone = cfg.get('model', {}).get('backbone')
    name = backbone.get('type') if isinstance(backbone, dict) else None
    if not isinstance(name, str) or name.split('.')[0] not in (
        name,
        'mmmetaformer',
    ):
        return  # a class object, or another package's scope
    cls = MODELS.get(name)
    if cls is None or not cls.__module__.startswith('mmmetaformer.'):
        return
    if (
        cfg.get('default_scope') == 'mmseg'
        and cfg.model.get('pretrained') is not None
    ):
        # as mmseg's EncoderDecoder passes it on (our backbones refuse it)
        backbone = dict(backbone, pretrained=cfg.model.pretrained)
    try:
        with torch.device('meta'):
            MODELS.build(backbone)
    except (ValueError, TypeError) as exc:
        raise LaunchError(f'model.backbone: {built_error(exc)}') from exc


def built_error(exc):
    """The message of an error raised while mmengine's registry built a
    class. Some mmengine versions re-raise it as ``type(exc)('class `X` in
    module.py: ...')``, once per nesting level (0.10.7 does not); the
    original message is kept."""
    return re.sub(r'^(class `[^`]*` in \S+\.py: )+', '', str(exc))


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    import mmmetaformer  # noqa: F401  (registers our modules)

    check_backbone_builds(cfg)
    if cfg.get('compile'):
        # mmengine would compile the optimizer step too, which dynamo
        # cannot trace (mmmetaformer/engine/compile.py)
        hooks = list(cfg.get('custom_hooks', []))
        if not any(h.get('type') == 'EagerOptimizerStepHook' for h in hooks):
            cfg.custom_hooks = hooks + [dict(type='EagerOptimizerStepHook')]
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _dataset_cfgs(cfg, dataloader_keys):
    """``(dataloader key, dataset cfg)`` pairs, wrappers unwrapped."""
    for key in dataloader_keys:
        loader = cfg.get(key)
        if not loader:
            continue
        dataset = loader.get('dataset', {})
        while 'dataset' in dataset:  # RepeatDataset and other wrappers
            dataset = dataset['dataset']
        yield key, dataset


def name_image_loader_for_inferencers(cfg):
    """``cfg`` with its test image loader named ``LoadImageFromFile``.

    mmdet's and mmseg's inferencers find the loader by that exact name and
    put their own (file or array) in its place; a scoped or checked one
    (``mmcv.LoadImageFromFile``, ``LoadCheckedImageFromFile``) would stay
    and fail on arrays. Returns ``cfg``.
    """
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform.type.split('.')[-1].endswith('ImageFromFile'):
            transform.type = 'LoadImageFromFile'
    return cfg


def check_images_when_loading(cfg, dataloader_keys):
    """Load the datasets' images through ``LoadCheckedImageFromFile``.

    Configs keep the stock ``LoadImageFromFile`` (mmdet's and mmseg's
    inferencers find their loader by that name); our tools swap it, by
    name and with its options, for the subclass that refuses an empty,
    undecodable or degenerate image, or a decompression bomb, with one line
    naming the file (``mmmetaformer/datasets/transforms.py``). A loader with
    another decoding backend than OpenCV is left as it is.
    """
    for _, dataset in _dataset_cfgs(cfg, dataloader_keys):
        for transform in dataset.get('pipeline', None) or []:
            if (
                transform.get('type')
                in ('LoadImageFromFile', 'mmcv.LoadImageFromFile')
                and transform.get('imdecode_backend', 'cv2') == 'cv2'
            ):
                transform['type'] = 'LoadCheckedImageFromFile'


def check_dataset_contents(cfg, scope, dataloader_keys, strict=False):
    """Check the datasets' annotations once, before the Runner starts.

    COCO files whole (unique image ids, known category ids, boxes mmdet
    would drop counted, or refused with ``strict``); segmentation datasets'
    image and label-map headers, with ``LoadAnnotations`` swapped for the
    loader that checks each label map's values (see
    ``mmmetaformer/datasets/checks.py`` for what is checked when).
    """
    from mmmetaformer.datasets.checks import DataCheckError, check_datasets

    if scope == 'mmseg':
        # registers the checked label-map loader the check swaps in (it
        # imports mmseg, so the package does not import it by itself)
        import mmmetaformer.datasets.seg_transforms  # noqa: F401
    try:
        check_datasets(cfg, scope, dataloader_keys, strict=strict)
    except (DataCheckError, ImageError) as exc:
        raise LaunchError(str(exc)) from None


def _annotation_files(cfg, dataloader_keys):
    """``(config key, path)`` of the datasets' and metrics' annotations."""
    for key, dataset in _dataset_cfgs(cfg, dataloader_keys):
        ann_file = dataset.get('ann_file', '')
        if ann_file and not osp.isabs(ann_file):
            ann_file = osp.join(dataset.get('data_root', ''), ann_file)
        if ann_file:
            yield key, ann_file
        # CocoMetric reads the annotations again, from its own ann_file
        evaluator_key = key.replace('_dataloader', '_evaluator')
        metrics = cfg.get(evaluator_key) or []
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            if isinstance(metric, dict) and metric.get('ann_file'):
                yield evaluator_key, metric['ann_file']


def _unparsable_json(cfg, dataloader_keys):
    """The first configured ``.json`` annotation file that does not parse."""
    for key, ann_file in _annotation_files(cfg, dataloader_keys):
        if not ann_file.endswith('.json') or not osp.isfile(ann_file):
            continue
        try:
            with open(ann_file) as f:
                json.load(f)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            return key, ann_file, exc
    return None


# Where a data pipeline loads files: the transform class, the key of the
# file in the sample dict, and what the file is.
_LOADERS = {
    'LoadImageFromFile': ('img_path', 'image'),
    'LoadAnnotations': ('seg_map_path', 'label map'),
}


def _failing_sample_file(exc):
    """``(path, what)`` of the file a pipeline transform failed on, or None.

    Decoders do not always name the file (Pillow: "cannot identify image
    file <BytesIO>"), so the traceback is searched, innermost frame first,
    for the loading transform and its ``results`` dict.
    """
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        transform = frame.f_locals.get('self')
        results = frame.f_locals.get('results')
        loader = _LOADERS.get(type(transform).__name__)
        if loader and isinstance(results, dict) and results.get(loader[0]):
            return results[loader[0]], loader[1]
    return None


@contextlib.contextmanager
def explain_data_errors(cfg, dataloader_keys):
    """Turn a broken dataset file met while running into a ``LaunchError``.

    mmdet and mmseg raise these from deep inside dataset building or the
    data pipeline, as a traceback that often does not name the file:

    * an annotation JSON that does not parse (``json.JSONDecodeError``):
      the configured ``.json`` files are parsed again to name the culprit;
    * a file listed in the annotations but missing on disk
      (``FileNotFoundError``);
    * an image or label map that does not decode (mmcv's "failed to load
      image" assertion, Pillow's ``UnidentifiedImageError``, ``OSError``);
    * an image our loader refused (``ImageError``, already one line naming
      the file; a data-loader worker re-raises it with the worker's
      traceback in front, which is dropped).
    """
    try:
        yield
    except ImageError as exc:
        # from a worker: 'Caught ImageError in DataLoader worker process 0.
        # Original Traceback ... ImageError: <message>'
        lines = str(exc).strip().splitlines()
        raise LaunchError(
            lines[-1].split(': ', 1)[-1] if len(lines) > 1 else lines[0]
        ) from exc
    except json.JSONDecodeError as exc:
        bad = _unparsable_json(cfg, dataloader_keys)
        if bad is None:
            raise
        key, ann_file, error = bad
        raise LaunchError(
            f'{key}: annotation file {ann_file} is not valid '
            f'JSON ({error}). Fix or regenerate it'
        ) from exc
    except FileNotFoundError as exc:
        sample = _failing_sample_file(exc)
        if sample is not None:
            raise LaunchError(
                f'{sample[1]} {exc.filename or sample[0]} does not exist '
                '(the dataset lists it)'
            ) from exc
        raise LaunchError(
            f'{exc.filename} does not exist' if exc.filename else str(exc)
        ) from exc
    except (AssertionError, OSError, ValueError) as exc:
        # OSError covers PIL.UnidentifiedImageError and truncated files.
        sample = _failing_sample_file(exc)
        if sample is None:
            raise
        path, what = sample
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Pillow names the in-memory buffer, not the file
        reason = re.sub(r' <[^>]*BytesIO[^>]*>', '', reason)
        raise LaunchError(
            f'cannot decode {what} {path}: it is corrupt or '
            f'not an image ({reason})'
        ) from exc


def run_tool(main):
    """Call ``main()``; print a user-facing error as one line and exit 2.

    User-facing errors: ``LaunchError``, the checkpoint errors
    (``CheckpointError``: unsafe, unreadable or not fitting the model, or
    not written), an output that could not be written
    (``OutputWriteError``) and a diverging run (``NonFiniteTrainingError``).
    Any other exception is a defect of ours: its traceback is printed,
    then a last line saying so, and the exit status is 1.
    """
    from mmmetaformer.checkpoint import CheckpointError
    from mmmetaformer.engine import NonFiniteTrainingError, OutputWriteError

    try:
        return main()
    except (
        LaunchError,
        CheckpointError,
        NonFiniteTrainingError,
        OutputWriteError,
    ) as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        print(f'error: {"; ".join(filter(None, lines))}', file=sys.stderr)
        sys.exit(2)
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            'this is a defect in mmmetaformer; please report it with the '
            'traceback above',
            file=sys.stderr,
        )
        sys.exit(1)
