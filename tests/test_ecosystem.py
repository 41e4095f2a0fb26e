"""The ecosystem's own tools and weights work with our configs, unmodified.

* mmdet's and mmseg's own ``tools/train.py`` and ``tools/test.py`` (shipped
  in the installed packages under ``.mim/tools/``) train and test the toy
  configs (inherited with a one-block, narrow backbone and narrow heads,
  ``tests/helpers.py`` ``tiny_variant``: checkpoints of about a megabyte) in
  processes that never import mmmetaformer themselves: the configs'
  ``custom_imports`` does. A trained toy checkpoint, rewritten in
  the published PoolFormer layouts (the authors' mmdet 2.x RetinaNet with
  ``FORK_LAST3``; mmseg's zoo) and converted back, loads in the stock test
  without a key warning (mmseg's reproduces the training run's validation
  metrics) and gives ``DetInferencer`` / ``MMSegInferencer`` the same
  predictions as the original.
* Drop-in: stock mmdet/mmseg configs with a MetaFormer backbone build and
  run; mmseg's ``model.pretrained`` gets an error that says what to do.
* ImageNet-21K weights: selectable by URL and loadable in their layout (a
  one-block, narrow CAFormer's file in that layout).

Cost: each stock run is 1-2 iterations on 2 tiny images (module-scoped
fixtures share the toy data and checkpoints); most of it is the fresh
processes' imports and mmengine resolving ``mmdet::``/``mmseg::`` bases.
"""

import ast
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

from mmmetaformer_tools.toy import make_ade20k, make_coco

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import get_installed_path

import mmmetaformer  # noqa: F401
from mmmetaformer.models.archs import (
    CONVMIXER_ARCHS,
    METAFORMER_ARCHS,
    WEIGHT_VARIANTS,
    pretrained_url,
)
from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
from mmmetaformer.registry import MODELS
from tests.helpers import (
    GROWING_TINY_DIMS,
    REPO_ROOT,
    pretrained_checkpoint,
    tiny_variant,
)
from tests.test_dense_checkpoints import as_published_file, convert, randomise
from tests.tolerance import assert_close, model_rounding

CONFIGS = REPO_ROOT / 'configs'
TOY_DET = CONFIGS / 'toy' / 'retinanet_poolformer_s12_toy_coco.py'
TOY_SEG = CONFIGS / 'toy' / 'semantic_fpn_poolformer_s12_toy_ade20k.py'
CUSTOM_IMPORTS = dict(imports=['mmmetaformer'], allow_failed_imports=False)
KEY_WARNINGS = (
    'missing keys in source state_dict',
    'unexpected key in source state_dict',
    'size mismatch',
)


def stock_tool(package, name):
    path = Path(get_installed_path(package)) / '.mim' / 'tools' / name
    assert path.is_file(), path
    return path


def run(args, cwd, timeout=600):
    """A fresh interpreter in ``cwd`` (not the repository) that can import
    this checkout's mmmetaformer, as an installed package would be: the
    tools themselves never import it."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])
        ),
    )
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


# --- every config imports mmmetaformer itself -----------------------------


def _literal(node):
    """A literal, also through ``dict(key=literal, ...)`` calls."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == 'dict'
        and not node.args
    ):
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    return ast.literal_eval(node)


def _assigned(tree):
    """Top-level ``name = <literal>`` of a config file (others as text)."""
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                out[node.targets[0].id] = _literal(node.value)
            except ValueError:
                out[node.targets[0].id] = ast.unparse(node.value)
    return out


def _custom_imports_in_chain(path, seen=(), key='custom_imports'):
    """``custom_imports`` of ``path`` or of its local bases (depth first).
    A value ``_base_.NAME`` (the recipe bases take it from
    configs/_base_/metaformer_runtime.py) is NAME in the local bases."""
    values = _assigned(ast.parse(path.read_text()))
    if key in values:
        value = values[key]
        if isinstance(value, str) and value.startswith('_base_.'):
            return _custom_imports_in_chain(
                path, seen, key=value.removeprefix('_base_.')
            )
        return value
    bases = values.get('_base_', [])
    for base in [bases] if isinstance(bases, str) else bases:
        if '::' in base:
            continue
        base_path = (path.parent / base).resolve()
        if base_path not in seen:
            found = _custom_imports_in_chain(base_path, seen + (path,), key)
            if found is not None:
                return found
    return None


def test_every_config_declares_custom_imports():
    """Parsed statically (a full load of 100+ configs costs minutes):
    each config, or one of its own bases, registers mmmetaformer."""
    configs = sorted(
        p for p in CONFIGS.rglob('*.py') if '_base_' not in p.parts
    )
    assert len(configs) > 90
    missing = [
        str(p.relative_to(REPO_ROOT))
        for p in configs
        if _custom_imports_in_chain(p) != CUSTOM_IMPORTS
    ]
    assert not missing, f'no custom_imports for mmmetaformer: {missing}'


# --- stock mmdet tools -----------------------------------------------------


@pytest.fixture(scope='module')
def tiny_toys(tmp_path_factory):
    """``{'det': path, 'seg': path}``: the toy RetinaNet and Semantic FPN
    with a one-block backbone of growing widths (as in the published
    layouts the tests below rewrite them to) and narrow heads."""
    directory = tmp_path_factory.mktemp('eco_configs')
    return dict(
        det=tiny_variant(directory, TOY_DET, 'retinanet', GROWING_TINY_DIMS),
        seg=tiny_variant(
            directory, TOY_SEG, 'semantic_fpn', GROWING_TINY_DIMS
        ),
    )


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    return make_coco(
        tmp_path_factory.mktemp('eco') / 'toy_coco',
        num_train=2,
        num_val=2,
        img_size=96,
        max_objects=2,
    )


def det_options(root):
    ann = f'{root}/annotations/instances_val2017.json'
    return [
        *(
            f'{loader}.dataset.data_root={root}'
            for loader in (
                'train_dataloader',
                'val_dataloader',
                'test_dataloader',
            )
        ),
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
        # toy images are 96 px: keep them at that size
        'train_dataloader.dataset.pipeline.2.scale=(96,96)',
        'val_dataloader.dataset.pipeline.1.scale=(96,96)',
        'test_dataloader.dataset.pipeline.1.scale=(96,96)',
        # after one iteration no score passes 0.05: keep every box (top 100)
        'model.test_cfg.score_thr=0.0',
    ]


@pytest.fixture(scope='module')
def det_run(toy_coco, tiny_toys, tmp_path_factory):
    """mmdet's tools/train.py: one iteration (2 images); the stock test
    below validates."""
    work = tmp_path_factory.mktemp('eco_det')
    output = run(
        [
            stock_tool('mmdet', 'train.py'),
            tiny_toys['det'],
            '--work-dir',
            work,
            '--cfg-options',
            *det_options(toy_coco),
            'train_cfg.max_epochs=1',
            'train_cfg.val_interval=2',
            'train_dataloader.batch_size=2',
            'default_hooks.logger.interval=1',
            # the checkpoint feeds the converter and the inferencer only
            'default_hooks.checkpoint.save_optimizer=False',
        ],
        cwd=work,
    )
    return work, output


def test_stock_mmdet_train(det_run):
    work, output = det_run
    assert (work / 'epoch_1.pth').is_file()
    assert re.search(r'Epoch\(train\) *\[1\]\[1/1\].*loss_cls', output), (
        output[-3000:]
    )


@pytest.fixture(scope='module')
def det_converted(det_run):
    """The toy RetinaNet as the authors' mmdet 2.x file (FORK_LAST3, no
    ``backbone.norm0``), converted back by tools/convert_checkpoint.py."""
    work, _ = det_run
    state_dict = torch.load(
        work / 'epoch_1.pth', map_location='cpu', weights_only=False
    )['state_dict']
    published = as_published_file(state_dict, fork_last3=True)
    assert 'backbone.network.6.0.layer_scale_2' in published['state_dict']
    torch.save(published, work / 'retinanet_authors_layout.pth')
    assert (
        convert(work / 'retinanet_authors_layout.pth', work / 'converted.pth')
        == 0
    )
    return work / 'converted.pth'


def test_stock_mmdet_test_with_converted_checkpoint(
    det_run, det_converted, toy_coco, tiny_toys
):
    """The converted authors'-layout file loads without a key warning and
    is evaluated with CocoMetric (the inferencer test below checks its
    predictions equal the original's)."""
    work, _ = det_run
    output = run(
        [
            stock_tool('mmdet', 'test.py'),
            tiny_toys['det'],
            det_converted,
            '--work-dir',
            work / 'test',
            '--cfg-options',
            *det_options(toy_coco),
        ],
        cwd=work,
    )
    assert 'Load checkpoint from' in output, output[-3000:]
    assert not any(w in output for w in KEY_WARNINGS), output[-3000:]
    assert re.search(r'coco/bbox_mAP: [\d.]+', output), output[-3000:]


# --- stock mmseg tools -----------------------------------------------------


@pytest.fixture(scope='module')
def toy_ade(tmp_path_factory):
    return make_ade20k(
        tmp_path_factory.mktemp('eco') / 'toy_ade',
        num_train=2,
        num_val=2,
        img_size=64,
    )


def seg_options(root):
    return [
        f'{loader}.dataset.data_root={root}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]


SEG_METRICS = re.compile(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)')


@pytest.fixture(scope='module')
def seg_run(toy_ade, tiny_toys, tmp_path_factory):
    """mmseg's tools/train.py: two iterations, then validation."""
    work = tmp_path_factory.mktemp('eco_seg')
    output = run(
        [
            stock_tool('mmseg', 'train.py'),
            tiny_toys['seg'],
            '--work-dir',
            work,
            '--cfg-options',
            *seg_options(toy_ade),
            'train_cfg.max_iters=2',
            'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2',
            # the checkpoint feeds the converter and the inferencer only
            'default_hooks.checkpoint.save_optimizer=False',
            'default_hooks.logger.interval=1',
            'train_dataloader.batch_size=2',
        ],
        cwd=work,
    )
    return work, output


def test_stock_mmseg_train(seg_run):
    work, output = seg_run
    assert (work / 'iter_2.pth').is_file()
    assert SEG_METRICS.search(output), output[-3000:]


@pytest.fixture(scope='module')
def seg_converted(seg_run):
    """The toy segmentor as mmseg's zoo saves it (mmpretrain PoolFormer
    keys, ``backbone.norm{0,2,4,6}``; mmseg 0.x meta), converted back."""
    work, _ = seg_run
    state_dict = torch.load(
        work / 'iter_2.pth', map_location='cpu', weights_only=False
    )['state_dict']
    published = as_published_file(
        state_dict,
        meta=dict(
            mmseg_version='0.24.1',
            iter=2,
            CLASSES=('wall',) * 150,
            PALETTE=[[120, 120, 120]] * 150,
        ),
    )
    assert 'backbone.norm0.weight' in published['state_dict']
    torch.save(published, work / 'fpn_zoo_layout.pth')
    assert convert(work / 'fpn_zoo_layout.pth', work / 'converted.pth') == 0
    return work / 'converted.pth'


def test_stock_mmseg_test_with_converted_checkpoint(
    seg_run, seg_converted, toy_ade, tiny_toys
):
    """Same weights, same validation images: the stock test reproduces the
    training run's validation metrics exactly."""
    work, train_output = seg_run
    output = run(
        [
            stock_tool('mmseg', 'test.py'),
            tiny_toys['seg'],
            seg_converted,
            '--work-dir',
            work / 'test',
            '--cfg-options',
            *seg_options(toy_ade),
        ],
        cwd=work,
    )
    assert not any(w in output for w in KEY_WARNINGS), output[-3000:]
    assert (
        SEG_METRICS.findall(output)[-1]
        == SEG_METRICS.findall(train_output)[-1]
    )


# --- the inferencers -------------------------------------------------------


def test_inferencers_with_toy_and_converted_checkpoints(
    det_run, det_converted, seg_run, toy_coco, toy_ade, tiny_toys
):
    """DetInferencer and MMSegInferencer with the trained toy checkpoints;
    the converted authors'-layout RetinaNet predicts exactly what the
    original does (for the segmentor, the stock test above showed it).
    In this process, which has imported mmmetaformer already: the stock
    runs above show ``custom_imports`` suffices on its own."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    det_image = str(sorted((toy_coco / 'val2017').glob('*.jpg'))[0])
    cfg = Config.fromfile(str(tiny_toys['det']))
    cfg.model.test_cfg.score_thr = 0.0  # one iteration: keep every box
    cfg.test_dataloader.dataset.pipeline[1].scale = (96, 96)  # image size
    det = [
        DetInferencer(
            model=cfg, weights=str(weights), device='cpu', show_progress=False
        )(det_image, no_save_vis=True)['predictions'][0]
        for weights in (det_run[0] / 'epoch_1.pth', det_converted)
    ]
    assert len(det[0]['bboxes']) > 0  # RetinaNet keeps its top-k boxes
    assert det[0] == det[1]
    seg_image = str(
        sorted((toy_ade / 'images' / 'validation').glob('*.jpg'))[0]
    )
    seg = MMSegInferencer(
        model=str(tiny_toys['seg']),
        weights=str(seg_run[0] / 'iter_2.pth'),
        device='cpu',
    )(seg_image)['predictions']
    assert seg.shape == (64, 64)
    assert set(seg.flat) <= set(range(150))


# --- drop-in ---------------------------------------------------------------


def build(cfg, scope):
    """Build a copy: mmseg's EncoderDecoder writes into the backbone cfg."""
    init_default_scope(scope)
    from mmengine.registry import MODELS as ROOT_MODELS

    return ROOT_MODELS.build(copy.deepcopy(cfg))


def test_stock_upernet_explains_model_pretrained():
    """The README's drop-in without ``pretrained=None``: mmseg's
    EncoderDecoder hands the R50 base's ``model.pretrained`` to ConvFormer,
    which says where it came from and what to do."""
    cfg = Config.fromfile(
        str(
            Path(get_installed_path('mmseg'))
            / '.mim'
            / 'configs'
            / 'upernet'
            / 'upernet_r50_4xb4-80k_ade20k-512x512.py'
        )
    )
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    cfg.model.backbone = dict(type='ConvFormer', arch='s18')
    cfg.model.decode_head.in_channels = [64, 128, 320, 512]
    cfg.model.auxiliary_head.in_channels = 320
    with pytest.raises(Exception) as info:
        build(cfg.model, 'mmseg')
    message = str(info.value)
    for part in (
        "ConvFormer got pretrained='open-mmlab://resnet50_v1c'",
        "EncoderDecoder passes the config's model.pretrained",
        'not a ConvFormer checkpoint',
        'model.pretrained=None',
        "model.backbone.init_cfg=dict(type='Pretrained'",
    ):
        assert part in message, message
    # The fix it gives is what configs/examples/upernet_convformer_s18_
    # drop_in.py does; test_example_builds_and_runs_forward builds that.


SMALLEST = {
    'convmixer': '768/32',
    **{
        family: next(iter(sizes)) for family, sizes in METAFORMER_ARCHS.items()
    },
}


@pytest.mark.parametrize('family', sorted(FAMILY_CLASSES))
def test_every_backbone_takes_pretrained_none_and_explains_a_string(family):
    cls = FAMILY_CLASSES[family]
    with torch.device('meta'):
        MODELS.build(dict(type=cls, arch=SMALLEST[family], pretrained=None))
    with pytest.raises(
        ValueError,
        match=rf"{cls} got pretrained='r50.pth'.*"
        r'model\.pretrained=None',
    ):
        MODELS.build(
            dict(type=cls, arch=SMALLEST[family], pretrained='r50.pth')
        )


# Stock configs with our backbone swapped in. The third example,
# semantic_fpn_convformer_s18_in21ft1k_ade20k.py, is the ConvFormer-S18
# leaf with another checkpoint (test_in21ft1k_selection_by_config_...).
EXAMPLES = {
    'faster_rcnn_poolformer_s12_drop_in.py': (
        'mmdet',
        'FasterRCNN',
        'poolformer',
        's12',
    ),
    'upernet_convformer_s18_drop_in.py': (
        'mmseg',
        'EncoderDecoder',
        'convformer',
        's18',
    ),
}


def test_examples_are_all_covered():
    assert sorted(
        p.name for p in (CONFIGS / 'examples').glob('*.py')
    ) == sorted([*EXAMPLES, 'semantic_fpn_convformer_s18_in21ft1k_ade20k.py'])


@pytest.mark.parametrize('name', sorted(EXAMPLES))
def test_example_builds_and_runs_forward(name):
    scope, model_type, family, arch = EXAMPLES[name]
    cfg = Config.fromfile(str(CONFIGS / 'examples' / name))
    assert cfg.custom_imports == CUSTOM_IMPORTS
    # the ImageNet weights by their Hub id, as the metafile lists them
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained',
        checkpoint=pretrained_checkpoint(
            CONFIGS / 'examples' / name, family, arch
        ),
    )
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no download here
    model = build(model_cfg, scope).eval()
    assert type(model).__name__ == model_type
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if scope == 'mmdet':
            feats = model.extract_feat(x)
            assert [tuple(f.shape) for f in feats] == [
                (1, 256, 16 // 2**i, 16 // 2**i) for i in range(5)
            ]
        else:
            logits = model(x, mode='tensor')
            assert tuple(logits.shape) == (1, 150, 16, 16)
            assert torch.isfinite(logits).all()


# --- ImageNet-21K weights ----------------------------------------------------


def test_pretrained_url_variants():
    assert set(WEIGHT_VARIANTS) == {'convformer', 'caformer'}
    for family, variants in WEIGHT_VARIANTS.items():
        for arch in METAFORMER_ARCHS[family]:
            assert pretrained_url(family, arch) == (
                f'https://huggingface.co/sail/dl/resolve/main/{family}/'
                f'{family}_{arch}.pth'
            )
            for variant in variants:
                assert pretrained_url(family, arch, variant) == (
                    f'https://huggingface.co/sail/dl/resolve/main/{family}/'
                    f'{family}_{arch}_{variant}.pth'
                )
    with pytest.raises(
        ValueError,
        match=r"No 'in21k' weights are published "
        r'for poolformerv2; valid variants: None',
    ):
        pretrained_url('poolformerv2', 's12', 'in21k')
    with pytest.raises(
        ValueError,
        match=r"No 'in22k' .*valid variants: "
        r'None, 384, in21ft1k, 384_in21ft1k, in21k',
    ):
        pretrained_url('caformer', 's18', 'in22k')
    with pytest.raises(
        ValueError,
        match=r"Unknown arch 's12' for caformer; "
        r'valid: s18, s36, m36, b36',
    ):
        pretrained_url('caformer', 's12')
    assert set(CONVMIXER_ARCHS) <= {'768/32', '1024/20', '1536/20'}


def test_in21ft1k_selection_by_config_and_cfg_options():
    """The example config and the documented ``--cfg-options`` line give the
    leaf's model with only the ImageNet checkpoint changed."""
    leaf = Config.fromfile(
        str(CONFIGS / 'semantic_fpn_convformer_s18_ade20k.py')
    )
    example = Config.fromfile(
        str(
            CONFIGS
            / 'examples'
            / 'semantic_fpn_convformer_s18_in21ft1k_ade20k.py'
        )
    )
    hub_id = pretrained_checkpoint(
        CONFIGS / 'examples' / 'semantic_fpn_convformer_s18_in21ft1k_'
        'ade20k.py',
        'convformer',
        's18',
        'in21ft1k',
    )
    assert hub_id == 'hf-hub:timm/convformer_s18.sail_in22k_ft_in1k'
    assert example.model.backbone.init_cfg.checkpoint == hub_id
    leaf.merge_from_dict({'model.backbone.init_cfg.checkpoint': hub_id})
    assert leaf.model.to_dict() == example.model.to_dict()


def as_baselines_layout(native):
    """Our backbone keys -> the authors' channels-last baselines keys
    (``downsample_layers``, ``stages.i.j``, Linear MLP/pointwise weights)."""
    out = {}
    for key, value in native.items():
        key = re.sub(
            r'^stem\.(conv|norm)\.',
            lambda m: (
                'downsample_layers.0.conv.'
                if m.group(1) == 'conv'
                else 'downsample_layers.0.post_norm.'
            ),
            key,
        )
        key = re.sub(
            r'^stages\.(\d)\.downsample\.norm\.',
            r'downsample_layers.\1.pre_norm.',
            key,
        )
        key = re.sub(
            r'^stages\.(\d)\.downsample\.conv\.',
            r'downsample_layers.\1.conv.',
            key,
        )
        key = re.sub(r'^stages\.(\d)\.blocks\.(\d+)\.', r'stages.\1.\2.', key)
        if (
            value.dim() == 4
            and value.shape[-2:] == (1, 1)
            and re.search(r'(mlp\.fc[12]|pwconv[12])\.weight$', key)
        ):
            value = value[:, :, 0, 0]
        out[key] = value
    return out


def with_mlp_head(state_dict, dim, num_classes):
    """The baselines' MLP head (fc1, LayerNorm, fc2) and final norm. The
    21841 x 4C in21k classifier is an expanded view of one element: the file
    stays small, the shapes are the published ones."""
    hidden = 4 * dim
    return dict(
        state_dict,
        **{
            'norm.weight': torch.ones(dim),
            'norm.bias': torch.zeros(dim),
            'head.fc1.weight': torch.zeros(hidden, dim),
            'head.fc1.bias': torch.zeros(hidden),
            'head.norm.weight': torch.ones(hidden),
            'head.norm.bias': torch.zeros(hidden),
            'head.fc2.weight': torch.zeros(1).expand(num_classes, hidden),
            'head.fc2.bias': torch.zeros(num_classes),
        },
    )


@pytest.mark.parametrize('family,variant', [('caformer', 'in21k')])
def test_in21k_weights_in_their_layout_load(family, variant, tmp_path):
    """The in21k file (21841-class head) of the family with attention; the
    in21ft1k / 384 files of both families have the same layout with a
    1000-class head, which the ImageNet-1K tests in test_checkpoints.py
    load. The layout is what is tested: a one-block backbone of growing
    widths in it, checked by the converter against that backbone."""
    cls = FAMILY_CLASSES[family]
    backbone = dict(
        type=cls,
        arch=dict(depths=[1, 1, 1, 1], dims=GROWING_TINY_DIMS),
        out_norm_cfg=None,
    )
    source = randomise(MODELS.build(backbone), seed=7)
    num_classes = 21841 if variant == 'in21k' else 1000
    dim = GROWING_TINY_DIMS[-1]
    published = with_mlp_head(
        as_baselines_layout(source.state_dict()), dim, num_classes
    )
    # named as published
    src = tmp_path / Path(pretrained_url(family, 's18', variant)).name
    torch.save(published, src)
    # the 21841-class fc2 costs nothing on disk (an expanded view)
    plain_fc2_bytes = 4 * published['head.fc2.weight'].numel()
    assert src.stat().st_size < plain_fc2_bytes / 10
    config = tmp_path / 'backbone.py'
    config.write_text(f'model = dict(backbone={backbone!r})\n')
    dst = tmp_path / f'{family}_{variant}_converted.pth'
    assert convert(src, dst, '--check-config', config) == 0
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = source(x)
    # (init_cfg also takes the published file itself: test_checkpoints.py)
    model = MODELS.build(
        dict(backbone, init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    )
    model.init_weights()
    # the same weights back through the converter: equal up to rounding
    # (the converted tensors may take other kernels or memory layouts)
    reduction, depth = model_rounding(model)
    with torch.no_grad():
        for got, want in zip(model.eval()(x), expected):
            assert_close(got, want, reduction, depth, msg='features')
