"""What the backbone benchmark runs: ours and timm's models, and a runner
(``callable(x) -> outputs``) per column.

==================  ====================================================
column              what runs (all ``eval()``, under ``torch.no_grad()``)
==================  ====================================================
``eager``           our registered backbone as built
``fused``           the same after ``switch_to_deploy()`` (norm affines,
                    scales and StarReLU folded into convs;
                    ``mmmetaformer/models/core/fuse.py``)
``compiled``        ``torch.compile(eager)`` (``compile_backend``,
                    inductor by default; one static-shape graph per size)
``fused_compiled``  ``torch.compile(fused)``
``onnx``            onnxruntime (CPU) on an ONNX export of ours (opset 17,
                    dynamic H and W; ``onnx_model`` eager or fused)
``timm``            ``timm.create_model(name, features_only=True)``
``timm_compiled``   ``torch.compile(timm)``
==================  ====================================================

Models are ``<family>_<arch>`` (``caformer_s18``, ``poolformer_s12``,
``convmixer_768_32``). The PoolFormer v1/v2, ConvFormer and CAFormer
families exist in timm: timm's classifier is built once, its state dict
loaded strictly into timm's features model and (converted) into ours.
IdentityFormer, RandFormer and ConvMixer (with our pyramid adapter) have
no timm features model, so they have no timm columns. Ours are built with
``out_norm_cfg=None`` (timm's features have no output norm).
"""

import copy
import os.path as osp
import re

import torch

from mmmetaformer.export import export_onnx

from .launch import LaunchError

COLUMNS = (
    'eager',
    'fused',
    'compiled',
    'fused_compiled',
    'onnx',
    'timm',
    'timm_compiled',
)
TIMM_COLUMNS = ('timm', 'timm_compiled')
# families timm builds as features_only models
TIMM_FAMILIES = ('poolformer', 'poolformerv2', 'convformer', 'caformer')


def model_table():
    """``{name: (family, registered class name, arch)}`` of every arch."""
    import mmmetaformer  # noqa: F401
    from mmmetaformer.models.backbones import FAMILY_CLASSES
    from mmmetaformer.registry import MODELS

    table = {}
    for family, cls_name in FAMILY_CLASSES.items():
        for arch in MODELS.get(cls_name).arch_zoo:
            name = f'{family}_{arch.replace("/", "_")}'
            table[name] = (family, cls_name, arch)
    return table


def resolve_model(name, table=None):
    """``caformer_s18`` -> ``('caformer', 'CAFormer', 's18')``."""
    table = table or model_table()
    if name not in table:
        raise LaunchError(
            f"unknown model '{name}'; valid models: {', '.join(sorted(table))}"
        )
    return table[name]


def has_timm(name, family):
    import timm

    return family in TIMM_FAMILIES and name in timm.list_models(name)


def build_models(name, device, channels_last=None):
    """``(ours, timm_features or None)``, same weights where timm has it.

    ``channels_last`` (``None``/``True``/``False``) is ours' argument;
    ``True``/``False`` also converts timm's parameters alike.
    """
    from mmmetaformer.checkpoint import to_native
    from mmmetaformer.registry import MODELS

    family, cls_name, arch = resolve_model(name)
    torch.manual_seed(0)
    ours = MODELS.build(
        dict(
            type=cls_name,
            arch=arch,
            out_norm_cfg=None,
            channels_last=channels_last,
        )
    )
    if not has_timm(name, family):
        return ours.to(device), None
    import timm

    state_dict = timm.create_model(name, pretrained=False).state_dict()
    reference = timm.create_model(name, pretrained=False, features_only=True)
    feature_sd = {
        re.sub(r'^stages\.(\d+)\.', r'stages_\1.', k): v
        for k, v in state_dict.items()
        if not k.startswith('head.')
    }
    reference.load_state_dict(feature_sd, strict=True)
    native, _, _ = to_native(state_dict, fmt='timm')
    own = ours.state_dict()
    missing = sorted(set(own) - set(native))
    unexpected = sorted(
        k for k in set(native) - set(own) if not k.startswith('head.')
    )
    shapes = sorted(
        k for k in own if k in native and own[k].shape != native[k].shape
    )
    if missing or unexpected or shapes:
        raise RuntimeError(
            f'{name}: timm weights do not fit {cls_name}: '
            f'missing {missing}, unexpected {unexpected}, '
            f'shape mismatch {shapes}'
        )
    ours.load_state_dict(
        {k: v for k, v in native.items() if k in own}, strict=True
    )
    reference = reference.to(device)
    if channels_last is not None:
        reference = reference.to(
            memory_format=torch.channels_last
            if channels_last
            else torch.contiguous_format
        )
    return ours.to(device), reference


class OnnxRunner:
    """An ONNX export of ``model`` run by onnxruntime on CPU.

    Exported once (opset 17, dynamic batch, H and W) and called like the
    model: ``runner(x)`` returns the outputs as tensors.
    """

    def __init__(self, model, x, threads, spin, workdir):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise LaunchError(
                "the 'onnx' column needs onnxruntime (pip install "
                'onnx onnxruntime, see requirements/tests.txt)'
                ' or leave it out of --columns'
            ) from exc
        path = osp.join(workdir, 'model.onnx')
        export_onnx(model, path, x, dynamic_batch=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry(
                'session.intra_op.allow_spinning', '0'
            )
        self.session = ort.InferenceSession(
            path, options, providers=['CPUExecutionProvider']
        )

    def __call__(self, x):
        outs = self.session.run(None, dict(image=x.cpu().numpy()))
        return [torch.from_numpy(o) for o in outs]


def build_runners(columns, ours, reference, x, settings, workdir):
    """``{column: callable(x) -> outputs}`` for the available columns."""
    runners = {}
    fused = None
    if {'fused', 'fused_compiled'} & set(columns) or (
        'onnx' in columns and settings.onnx_model == 'fused'
    ):
        fused = copy.deepcopy(ours).switch_to_deploy()

    def compiled(model):
        return torch.compile(
            model, backend=settings.compile_backend, dynamic=False
        )

    for column in columns:
        if column in TIMM_COLUMNS and reference is None:
            continue
        if column == 'eager':
            runners[column] = ours
        elif column == 'fused':
            runners[column] = fused
        elif column == 'compiled':
            runners[column] = compiled(ours)
        elif column == 'fused_compiled':
            runners[column] = compiled(fused)
        elif column == 'onnx':
            source = fused if settings.onnx_model == 'fused' else ours
            runners[column] = OnnxRunner(
                source,
                x,
                settings.threads,
                spin=settings.clock != 'cpu',
                workdir=workdir,
            )
        elif column == 'timm':
            runners[column] = reference
        elif column == 'timm_compiled':
            runners[column] = compiled(reference)
    return runners
