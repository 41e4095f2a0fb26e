"""Small helpers shared by the test modules."""

import copy
import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def own_settings(path):
    """What a config file sets itself, its ``_base_`` left unresolved.

    Leaf configs are plain Python (``_base_ = [...]``, ``model = dict(...)``),
    so running one gives exactly what it adds to its base, in microseconds;
    ``Config.fromfile`` resolves the whole ``mmdet::``/``mmseg::`` chain
    (1-2 s of CPU per file).
    """
    namespace = {}
    exec(compile(Path(path).read_text(), str(path), 'exec'), namespace)
    del namespace['__builtins__']
    return namespace


def merged_into(base, own):
    """``base`` (a parsed config as a dict) with ``own`` (``own_settings``
    of a leaf) merged in by mmengine's own ``Config.merge_from_dict``
    (nested dicts key by key, anything else replaced), as a dict."""
    from mmengine.config import Config

    cfg = Config(copy.deepcopy(base))
    cfg.merge_from_dict({k: v for k, v in own.items() if k != '_base_'})
    return cfg.to_dict()


@functools.cache
def metafile_entries():
    """``{config path relative to the repo: metafile entry}``."""
    import yaml

    with open(REPO_ROOT / 'configs' / 'metafile.yml') as f:
        return {m['Config']: m for m in yaml.safe_load(f)['Models']}


def pretrained_checkpoint(path, family, arch, variant=None):
    """The ``init_cfg`` checkpoint the config at ``path`` must name: the
    Hub id (``pretrained_hub_id``) of the published ImageNet weights of
    ``family``/``arch``/``variant``, the weights its metafile entry lists
    (``Pretrained``: the authors' URL, ``pretrained_url``; ``Pretrained
    Hub``: that id; make_model_index.py checks that the two agree)."""
    from mmmetaformer.models.archs import pretrained_hub_id, pretrained_url

    hub_id = pretrained_hub_id(family, arch, variant)
    entry = metafile_entries()[
        Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    ]
    assert entry['Metadata']['Pretrained'] == pretrained_url(
        family, arch, variant
    ), path
    assert entry['Metadata']['Pretrained Hub'] == hub_id, path
    return hub_id


def check_leaf_settings(path, base, family, arch, base_backbone=None):
    """The contract of every dense-prediction leaf config.

    It names ``base`` as its one base and sets only its backbone (the
    family's registered class, ``arch``, the ImageNet weights by their Hub
    id as ``pretrained_checkpoint`` checks, optionally ``drop_path_rate``)
    and the neck's ``in_channels``, which must be what that backbone, with
    ``base_backbone``'s options, emits (built on the ``meta`` device).

    Returns:
        tuple: the leaf's backbone config (base options merged in) and the
        backbone built from it on ``meta``.
    """
    import torch

    from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
    from mmmetaformer.registry import MODELS

    own = own_settings(path)
    assert own['_base_'] == [base]
    assert set(own) == {'_base_', 'checkpoint_file', 'model'}
    assert set(own['model']) == {'backbone', 'neck'}
    assert set(own['model']['neck']) == {'in_channels'}
    backbone = own['model']['backbone']
    assert set(backbone) <= {'type', 'arch', 'init_cfg', 'drop_path_rate'}
    assert backbone['type'] == FAMILY_CLASSES[family]
    assert backbone['arch'] == arch
    assert backbone['init_cfg'] == dict(
        type='Pretrained', checkpoint=pretrained_checkpoint(path, family, arch)
    )
    backbone = dict(base_backbone or {}, **backbone)
    with torch.device('meta'):
        model = MODELS.build(dict(backbone, init_cfg=None))
    assert list(own['model']['neck']['in_channels']) == list(
        model.out_channels
    )
    return backbone, model


def family_archs():
    """``[(family, registered type, arch)]`` of every registered arch, in
    the arch tables' order (from ``FAMILY_CLASSES`` and each class's
    ``arch_zoo``)."""
    from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
    from mmmetaformer.registry import MODELS

    return [
        (family, name, arch)
        for family, name in FAMILY_CLASSES.items()
        for arch in MODELS.get(name).arch_zoo
    ]


def smallest_archs():
    """``[(family, registered type, arch)]``: the first (smallest) arch of
    each family, for the contracts that run real arithmetic."""
    seen = {}
    for family, name, arch in family_archs():
        seen.setdefault(family, (family, name, arch))
    return list(seen.values())


def built_stack(venv):
    """The stack (``requirements/stacks/<stack>.txt``) whose environment
    tools/setup_env.sh built in ``venv`` (a ``.venv-<stack>`` folder), or
    None."""
    venv = Path(venv)
    stack = venv.name[len('.venv-') :]
    if (
        venv.name.startswith('.venv-')
        and (venv / '.mmmetaformer-env-stamp').exists()
        and (REPO_ROOT / 'requirements' / 'stacks' / f'{stack}.txt').exists()
    ):
        return stack
    return None


# The toy detectors and segmentor (configs/toy/), and the same with a tiny
# backbone and heads for the tests whose subject is not the model's size.
TOY_DETECTORS = {
    det: REPO_ROOT / 'configs' / 'toy' / f'{det}_poolformer_s12_toy_coco.py'
    for det in ('retinanet', 'mask_rcnn')
}
TOY_CONFIGS = dict(
    TOY_DETECTORS,
    semantic_fpn=REPO_ROOT
    / 'configs'
    / 'toy'
    / 'semantic_fpn_poolformer_s12_toy_ade20k.py',
)

# One block per stage, narrow stages; all four stages' widths, the last
# three for RetinaNet (backbone out_indices 1..3).
TINY_DIMS = [16, 32, 64, 64]
# The same as a backbone ``arch``: every MetaFormer family takes it (its
# own mixers and norms at this size), for tests of files and formats whose
# subject is not the model's size (a checkpoint of it is about 1 MB).
TINY_ARCH = dict(depths=[1, 1, 1, 1], dims=TINY_DIMS)
# FPN and head width (toy: 128 RetinaNet and Semantic FPN, 256 Mask
# R-CNN); the RetinaNet head's GroupNorm(32) needs 2 channels a group at
# the 1x1 levels.
TINY_WIDTH = 64
TINY_HEADS = dict(
    retinanet=(
        f'    neck=dict(in_channels={TINY_DIMS[1:]},\n'
        f'              out_channels={TINY_WIDTH}),\n'
        f'    bbox_head=dict(in_channels={TINY_WIDTH},\n'
        f'                   feat_channels={TINY_WIDTH}))\n'
    ),
    mask_rcnn=(
        f'    neck=dict(in_channels={TINY_DIMS}, out_channels={TINY_WIDTH}),\n'
        f'    rpn_head=dict(in_channels={TINY_WIDTH},\n'
        f'                  feat_channels={TINY_WIDTH}),\n'
        '    roi_head=dict(\n'
        f'        bbox_roi_extractor=dict(out_channels={TINY_WIDTH}),\n'
        f'        bbox_head=dict(in_channels={TINY_WIDTH},\n'
        f'                       fc_out_channels={2 * TINY_WIDTH}),\n'
        f'        mask_roi_extractor=dict(out_channels={TINY_WIDTH}),\n'
        f'        mask_head=dict(in_channels={TINY_WIDTH},\n'
        f'                       conv_out_channels={TINY_WIDTH})))\n'
    ),
    semantic_fpn=(
        f'    neck=dict(in_channels={TINY_DIMS}, out_channels={TINY_WIDTH}),\n'
        f'    decode_head=dict(in_channels={[TINY_WIDTH] * 4},\n'
        f'                     channels={TINY_WIDTH // 2}))\n'
    ),
)


def tiny_config(directory, kind):
    """The toy ``kind`` config (``'retinanet'``, ``'mask_rcnn'``,
    ``'semantic_fpn'``) with a tiny backbone and heads, resolved into one
    file without bases (the tools parse it faster):
    ``directory/<kind>_tiny_toy_<dataset>.py``."""
    from mmengine.config import Config

    toy = TOY_CONFIGS[kind]
    tiny = directory / f'{kind}_tiny_base.py'
    tiny.write_text(
        f'_base_ = [{str(toy)!r}]\n'
        'model = dict(\n'
        '    backbone=dict(arch=dict(_delete_=True, depths=[1, 1, 1, 1],\n'
        f'                            dims={TINY_DIMS})),\n' + TINY_HEADS[kind]
    )
    dataset = toy.stem.rsplit('_', 1)[-1]
    flat = directory / f'{kind}_tiny_toy_{dataset}.py'
    Config.fromfile(str(tiny)).dump(str(flat))
    return flat


def load_tool(script):
    """``tools/<script>`` (e.g. ``'analysis/benchmark_backbone.py'``)
    imported as a module, so that its ``main`` and functions run in this
    process."""
    path = REPO_ROOT / 'tools' / script
    spec = importlib.util.spec_from_file_location(f'tool_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(script, *args, timeout=600, cwd=None, env=None):
    """Run ``tools/<script>`` with this interpreter; return the process."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO_ROOT,
        env=env,
    )


BENCHMARK_HEADER = (
    '| config | device | images | model img/s | overall img/s '
    '| median ms/batch | peak tensor MB | peak RSS MB |'
)


def benchmark_row(stdout, config_name):
    """The cells of ``tools/analysis/benchmark.py``'s row for a config.

    Checks the table header is printed and the measured figures are
    positive numbers.
    """
    assert BENCHMARK_HEADER in stdout, stdout[-3000:]
    rows = [
        line
        for line in stdout.splitlines()
        if line.startswith(f'| {config_name} |')
    ]
    assert len(rows) == 1, stdout[-3000:]
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    assert len(cells) == 8, cells
    figures = [float(c) for c in cells[3:]]
    assert all(f > 0 for f in figures), cells
    return cells


# Widths that grow at every stage, as every published size's do: timm's
# MetaFormer has a downsampling layer only where the width changes, so its
# layouts at ``TINY_DIMS`` (64, 64) lack the last one; the published files
# of every layout have one at each stage. Stages 3 and 4 are multiples of
# CAFormer's attention head width (32).
GROWING_TINY_DIMS = [16, 32, 64, 96]


def tiny_variant(directory, config, kind, dims=None, arch=None):
    """``config`` (any RetinaNet, Mask R-CNN or Semantic FPN config, ``kind``
    as in ``TINY_HEADS``) with a tiny backbone and the tiny heads of
    ``tiny_config``, as a config that inherits it (its datasets, recipe and
    ``custom_imports`` kept): ``directory/<config's stem>_tiny.py``.

    The backbone takes ``arch`` (default: one block a stage, ``dims``),
    the neck ``dims`` (default ``TINY_DIMS``; RetinaNet's the last three).
    For tests of a real config's checkpoint layout whose subject is not
    the model's size.
    """
    dims = list(TINY_DIMS if dims is None else dims)
    arch = dict(depths=[1, 1, 1, 1], dims=dims) if arch is None else arch
    tiny = Path(directory) / f'{Path(config).stem}_tiny.py'
    tiny.write_text(
        f'_base_ = [{str(config)!r}]\n'
        'model = dict(\n'
        f'    backbone=dict(arch=dict(_delete_=True, **{arch!r})),\n'
        + TINY_HEADS[kind]
        # the neck reads the backbone's widths (TINY_HEADS: TINY_DIMS)
        + f"model['neck']['in_channels'] = "
        f'{dims[1:] if kind == "retinanet" else dims}\n'
    )
    return tiny


# The same as a backbone ``arch``, one block a stage.
GROWING_TINY_ARCH = dict(depths=[1, 1, 1, 1], dims=GROWING_TINY_DIMS)

# timm's arguments of each MetaFormer family's variants other than depths
# and dims (timm.models.metaformer's model functions, e.g.
# ``poolformer_s12``), for references of that family at any size.
TIMM_METAFORMER_KWARGS = dict(
    poolformer=lambda nn, tm: dict(
        downsample_norm=None,
        mlp_act=nn.GELU,
        mlp_bias=True,
        norm_layers=tm.GroupNorm1,
        layer_scale_init_values=1e-5,
        res_scale_init_values=None,
        use_mlp_head=False,
    ),
    poolformerv2=lambda nn, tm: dict(
        norm_layers=tm.GroupNorm1NoBias, use_mlp_head=False
    ),
    convformer=lambda nn, tm: dict(
        token_mixers=tm.SepConv, norm_layers=tm.LayerNorm2dNoBias
    ),
    caformer=lambda nn, tm: dict(
        token_mixers=[tm.SepConv] * 2 + [tm.Attention] * 2,
        norm_layers=[tm.LayerNorm2dNoBias] * 2 + [tm.LayerNormNoBias] * 2,
    ),
)


def module_layout(model):
    """``(module class names, state-dict keys with every number as '#')``:
    what a network is built of, whatever its depths and widths."""
    import re

    return (
        {type(m).__name__ for m in model.modules()},
        {re.sub(r'\d+', '#', key) for key in model.state_dict()},
    )


@functools.cache
def timm_layout(name, features_only=False):
    """``module_layout`` of ``timm.create_model(name)`` (built in memory,
    under a second; nothing is written)."""
    import timm

    return module_layout(
        timm.create_model(name, pretrained=False, features_only=features_only)
    )


def tiny_timm_metaformer(name, features_only=False):
    """timm's model ``name`` (``'caformer_s18'``) at ``GROWING_TINY_ARCH``:
    timm's ``MetaFormer`` with the variant's other arguments
    (``TIMM_METAFORMER_KWARGS``), through timm's own builder (with
    ``features_only``, its stage-features wrapper, as
    ``timm.create_model(name, features_only=True)`` makes it). Checked to
    be built of the variant's modules with the variant's key pattern
    (``timm_layout``), so the tiny reference is that variant made small."""
    import torch.nn as nn
    from timm.models import build_model_with_cfg
    from timm.models import metaformer as tm

    family = name.split('_')[0]
    model = build_model_with_cfg(
        tm.MetaFormer,
        name,
        pretrained=False,
        features_only=features_only,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **GROWING_TINY_ARCH,
        **TIMM_METAFORMER_KWARGS[family](nn, tm),
    )
    assert module_layout(model) == timm_layout(name, features_only), name
    return model


def tiny_backbone_config(directory, backbone_type, arch=None):
    """A config of just a ``backbone_type`` backbone with ``arch`` (default
    ``TINY_ARCH``): ``directory/tiny_<type>.py``, for
    ``convert_checkpoint.py --check-config`` on a tiny checkpoint (without
    it the tool checks against the published sizes only)."""
    arch = TINY_ARCH if arch is None else arch
    path = Path(directory) / f'tiny_{backbone_type.lower()}.py'
    path.write_text(
        f'model = dict(backbone=dict(type={backbone_type!r}, arch={arch!r}))\n'
    )
    return path
