"""Checks that the installed stack imports and mmcv has its compiled ops.

Kept free of package-level imports so ``tools/check_env.py`` can load it by
path even when the rest of the environment is broken.
"""

import importlib

# (import name, distribution name) of every package the project runs on.
STACK_PACKAGES = (
    ('torch', 'torch'),
    ('torchvision', 'torchvision'),
    ('mmcv', 'mmcv'),
    ('mmengine', 'mmengine'),
    ('mmdet', 'mmdet'),
    ('mmseg', 'mmsegmentation'),
    ('timm', 'timm'),
    ('numpy', 'numpy'),
    ('pycocotools', 'pycocotools'),
)

MMCV_OPS_FIX = (
    'mmcv is installed without its compiled ops (mmcv._ext); mmdet needs them '
    '(batched_nms in RetinaNet, RoIAlign in Mask R-CNN) and mmcv-lite is not '
    'enough. Fix: run `make env` (it builds mmcv 2.1.0 from source with '
    'MMCV_WITH_OPS=1, with the C++ standard your torch needs, and caches the '
    'wheel per torch version), or by hand: `pip uninstall -y mmcv mmcv-lite '
    '&& pip install "setuptools<82" && MMCV_WITH_OPS=1 pip install '
    '--no-build-isolation mmcv==2.1.0` (torch >= 2.13 also needs -std=c++20 '
    "in place of -std=c++17 in mmcv's setup.py; tools/setup_env.sh does "
    'that).'
)


class MMCVOpsMissingError(RuntimeError):
    """mmcv imports but its compiled extension is missing or broken."""


def _distribution_version(dist_name):
    # pycocotools has no __version__; its distribution metadata does.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return 'unknown'


def stack_versions():
    """Import every stack package; return ``{import_name: version}``.

    Raises:
        ImportError: naming every package that failed, with its error.
    """
    versions, failures = {}, []
    for module_name, dist_name in STACK_PACKAGES:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # report every failure, not the first
            failures.append(
                f'{dist_name} ({module_name}): {type(exc).__name__}: {exc}'
            )
            continue
        versions[module_name] = getattr(
            module, '__version__', None
        ) or _distribution_version(dist_name)
    if failures:
        raise ImportError(
            'These stack packages do not import:\n  '
            + '\n  '.join(failures)
            + '\nRun `make env` to (re)build the environment.'
        )
    return versions


def check_mmcv_ops():
    """Run nms, batched_nms and RoIAlign on CPU tensors.

    Raises:
        MMCVOpsMissingError: with the fix, if the compiled ops are absent.
    """
    import torch

    try:
        from mmcv.ops import RoIAlign, batched_nms, nms
    except (ImportError, ModuleNotFoundError) as exc:
        raise MMCVOpsMissingError(f'{MMCV_OPS_FIX}\n(cause: {exc})') from exc
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7])
    try:
        _, keep = nms(boxes, scores, iou_threshold=0.5)
        _, keep_batched = batched_nms(
            boxes,
            scores,
            torch.tensor([0, 1, 0]),
            dict(type='nms', iou_threshold=0.5),
        )
        rois = torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]])
        pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(
            torch.arange(64.0).view(1, 1, 8, 8), rois
        )
    except Exception as exc:
        raise MMCVOpsMissingError(f'{MMCV_OPS_FIX}\n(cause: {exc})') from exc
    if keep.tolist() != [0, 2] or sorted(keep_batched.tolist()) != [0, 1, 2]:
        raise MMCVOpsMissingError(
            f'mmcv nms gave wrong results ({keep.tolist()}, '
            f'{keep_batched.tolist()}); the build is broken. {MMCV_OPS_FIX}'
        )
    if tuple(pooled.shape) != (1, 1, 2, 2):
        raise MMCVOpsMissingError(
            f'mmcv RoIAlign gave shape {tuple(pooled.shape)}; the build is '
            f'broken. {MMCV_OPS_FIX}'
        )
