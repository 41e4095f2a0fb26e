"""Semantic FPN on ADE20K: the shared recipe, every leaf config, the toy
config layered on a leaf, a train/test run through the tools and the
stock-config drop-in example.

Cost: the base (``configs/_base_/semantic_fpn_ade20k.py``) is parsed and
checked once, with its network built on the ``meta`` device (output shapes
without arithmetic). Each of the 31 leaves is checked for what it sets
itself, read without resolving its bases; one leaf parsed in full equals
the base plus those settings. Backbones are built on ``meta``, so the big
archs (M48, B36, ConvMixer-1536/20) stay cheap. Real loss and predict
forwards run on the smallest arch of each family. The end-to-end run trains
4 iterations at 128x128 crops.
"""

import copy
import functools
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

import mmmetaformer  # noqa: F401
from mmmetaformer.engine import sync_bn_to_bn
from tests.helpers import (
    REPO_ROOT,
    benchmark_row,
    check_leaf_settings,
    family_archs,
    merged_into,
    own_settings,
    run_tool,
    smallest_archs,
    tiny_config,
)

CONFIGS = REPO_ROOT / 'configs'
BASE_CONFIG = CONFIGS / '_base_' / 'semantic_fpn_ade20k.py'
TOY_CONFIG = CONFIGS / 'toy' / 'semantic_fpn_poolformer_s12_toy_ade20k.py'
DROP_IN_CONFIG = CONFIGS / 'examples' / 'upernet_convformer_s18_drop_in.py'

LEAVES = [(family, arch) for family, _, arch in family_archs()]
LEAF_IDS = [f'{family}_{arch.replace("/", "_")}' for family, arch in LEAVES]
# The smallest arch of each family: these also run real forwards.
SMALL_LEAVES = [(f, a) for f, _, a in smallest_archs()]
SMALL_IDS = [f'{f}_{a.replace("/", "_")}' for f, a in SMALL_LEAVES]
NUM_CLASSES = 150


def leaf_path(family, arch):
    name = arch.replace('/', '_')
    return CONFIGS / f'semantic_fpn_{family}_{name}_ade20k.py'


@functools.cache
def load(path):
    """Parsing a config with mmseg:: bases takes about a second: cache it.
    Callers must not modify the returned config."""
    return Config.fromfile(str(path))


def step(pipeline, type_name):
    matches = [t for t in pipeline if t['type'] == type_name]
    assert len(matches) == 1, (type_name, pipeline)
    return matches[0]


def build_model(model_cfg, device=None):
    """Build a segmentor as the tools would on this CPU machine."""
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    model_cfg = copy.deepcopy(model_cfg)
    sync_bn_to_bn(model_cfg)
    if device is None:
        return MODELS.build(model_cfg)
    with torch.device(device):
        return MODELS.build(model_cfg)


def seg_samples(batch, height, width, seed=0):
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        labels = torch.randint(
            0, NUM_CLASSES, (1, height, width), generator=gen
        )
        labels[:, :4] = 255  # some ignored pixels, as in real label maps
        sample = SegDataSample(gt_sem_seg=PixelData(data=labels))
        sample.set_metainfo(
            dict(
                img_shape=(height, width),
                ori_shape=(height, width),
                pad_shape=(height, width),
            )
        )
        samples.append(sample)
    return samples


# --------------------------------------------------------------------------
# Every leaf config
# --------------------------------------------------------------------------


def test_one_leaf_per_family_and_arch():
    found = sorted(p.name for p in CONFIGS.glob('semantic_fpn_*_ade20k.py'))
    assert found == sorted(leaf_path(f, a).name for f, a in LEAVES)
    assert len(found) == 5 * 4 + 4 * 2 + 3


def test_base_recipe_and_network():
    cfg = load(BASE_CONFIG)
    assert cfg.default_scope == 'mmseg'

    # Optimiser and schedule: AdamW 2e-4 / 1e-4, poly 0.9 to 0 over 40k.
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=2e-4, weight_decay=1e-4
    )
    assert cfg.optim_wrapper.paramwise_cfg == dict(flat_decay_mult=0.0)
    assert len(cfg.param_scheduler) == 1
    poly = cfg.param_scheduler[0]
    assert (
        poly.type,
        poly.power,
        poly.eta_min,
        poly.begin,
        poly.end,
        poly.by_epoch,
    ) == ('PolyLR', 0.9, 0.0, 0, 40000, False)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == 40000
    assert cfg.train_cfg.val_interval == 4000
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=32)

    # Data: 4 images per GPU, random resize + 512x512 crop, test at
    # shorter side 512 rounded to a multiple of 32.
    assert cfg.train_dataloader.batch_size == 4
    train_pipeline = cfg.train_dataloader.dataset.pipeline
    resize = step(train_pipeline, 'RandomResize')
    assert tuple(resize.scale) == (2048, 512)
    assert tuple(resize.ratio_range) == (0.5, 2.0)
    crop = step(train_pipeline, 'RandomCrop')
    assert tuple(crop.crop_size) == (512, 512)
    assert crop.cat_max_ratio == 0.75
    step(train_pipeline, 'RandomFlip')
    step(train_pipeline, 'PhotoMetricDistortion')
    assert tuple(cfg.model.data_preprocessor.size) == (512, 512)
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        pipeline = loader.dataset.pipeline
        test_resize = step(pipeline, 'Resize')
        assert tuple(test_resize.scale) == (2048, 512)
        assert test_resize.keep_ratio
        assert step(pipeline, 'ResizeToMultiple').size_divisor == 32
    assert cfg.test_evaluator.type == 'IoUMetric'

    # Network: the leaf's backbone (nothing of ResNet's left), FPN 256 x 4,
    # FPNHead 128 / 150.
    model = cfg.model
    assert model.pretrained is None
    assert model.backbone.type is None and 'depth' not in model.backbone
    assert model.neck.type == 'FPN'
    assert model.neck.in_channels is None  # every leaf sets it
    assert (model.neck.out_channels, model.neck.num_outs) == (256, 4)
    head = model.decode_head
    assert head.type == 'FPNHead'
    assert (head.channels, head.num_classes, head.dropout_ratio) == (
        128,
        NUM_CLASSES,
        0.1,
    )
    assert list(head.in_channels) == [256] * 4
    assert head.norm_cfg.type == 'SyncBN'  # the multi-GPU recipe
    assert model.test_cfg.mode == 'whole'

    # Built (on meta) with a backbone of channels unlike any ResNet's: the
    # whole network maps an image to 150 logits at stride 4.
    segmentor = build_model(
        merged_into(
            model.to_dict(),
            dict(
                backbone=dict(type='PoolFormerV2', arch='m36'),
                neck=dict(in_channels=[96, 192, 384, 768]),
            ),
        ),
        device='meta',
    )
    segmentor.eval()
    logits = segmentor(
        torch.empty(2, 3, 96, 128, device='meta'), mode='tensor'
    )
    assert logits.shape == (2, NUM_CLASSES, 24, 32)


def test_a_leaf_is_its_base_plus_what_it_sets():
    """Parsed in full by mmengine, a leaf equals the base with the leaf's
    own settings merged in: what ``test_leaf_settings`` checks for every
    leaf is all that differs from the base."""
    path = leaf_path('convformer', 's18')
    assert load(path).to_dict() == merged_into(
        load(BASE_CONFIG).to_dict(), own_settings(path)
    )


@pytest.mark.parametrize('family,arch', LEAVES, ids=LEAF_IDS)
def test_leaf_settings(family, arch):
    backbone, _ = check_leaf_settings(
        leaf_path(family, arch),
        './_base_/semantic_fpn_ade20k.py',
        family,
        arch,
    )
    # drop path as published for PoolFormer v1, 0.1 for the baselines
    expected_dpr = {'poolformer': 0.0, 'convmixer': None}.get(family, 0.1)
    assert backbone.get('drop_path_rate') == expected_dpr


@pytest.mark.parametrize('family,arch', SMALL_LEAVES, ids=SMALL_IDS)
def test_leaf_forward_loss_and_predict(family, arch):
    """Real arithmetic for the smallest arch of each family (SyncBN -> BN
    as tools/train.py does on CPU)."""
    torch.manual_seed(0)
    model = build_model(load(leaf_path(family, arch)).model)
    model.train()
    inputs = torch.randn(2, 3, 64, 64)
    losses = model(inputs, seg_samples(2, 64, 64), mode='loss')
    assert set(losses) == {'decode.loss_ce', 'decode.acc_seg'}
    assert torch.isfinite(losses['decode.loss_ce'])
    # Untrained (init_weights not run, so no pretrained download): near the
    # cross-entropy of a uniform guess over 150 classes, log(150) = 5.0.
    loss = losses['decode.loss_ce'].item()
    assert 0.5 * math.log(NUM_CLASSES) < loss < 2 * math.log(NUM_CLASSES)

    model.eval()
    image = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8)
    with torch.no_grad():
        preds = model.test_step(
            dict(inputs=[image], data_samples=seg_samples(1, 48, 80))
        )
    pred = preds[0].pred_sem_seg.data
    assert pred.shape == (1, 48, 80)
    assert 0 <= pred.min() and pred.max() < NUM_CLASSES
    assert preds[0].seg_logits.data.shape == (NUM_CLASSES, 48, 80)


# --------------------------------------------------------------------------
# Weight decay
# --------------------------------------------------------------------------

# Parameters that must not decay / must decay, by name fragment; each must
# match at least one parameter of the model.
NO_DECAY = {
    'caformer': [
        'backbone.stem.norm.weight',
        '.norm1.weight',
        '.norm2.weight',
        '.downsample.norm.weight',
        'backbone.out_norms.0.weight',
        'backbone.out_norms.3.bias',
        '.res_scale1.scale',
        '.res_scale2.scale',
        '.mlp.act.scale',
        '.mlp.act.bias',
        '.token_mixer.act1.scale',
        '.token_mixer.act1.bias',
        '.stem.conv.bias',
        'decode_head.scale_heads.0.0.bn.weight',
        'decode_head.conv_seg.bias',
    ],
    'poolformer': [
        '.norm1.weight',
        '.norm1.bias',
        '.layer_scale1.scale',
        '.layer_scale2.scale',
        '.mlp.fc1.bias',
        'backbone.out_norms.1.weight',
    ],
    # BatchNorms after the patch embedding, the depthwise and the pointwise
    # convs; the adapter's GroupNorm.
    'convmixer': [
        'backbone.stem.2.weight',
        'backbone.blocks.0.0.fn.2.weight',
        'backbone.blocks.0.3.bias',
        'backbone.adapter.refines.0.0.weight',
        'backbone.out_norms.2.bias',
    ],
}
DECAY = {
    'caformer': [
        'backbone.stem.conv.weight',
        '.downsample.conv.weight',
        '.token_mixer.pwconv1.weight',
        '.token_mixer.dwconv.weight',
        '.token_mixer.qkv.weight',
        '.token_mixer.proj.weight',
        '.mlp.fc1.weight',
        '.mlp.fc2.weight',
        'neck.lateral_convs.0.conv.weight',
        'neck.fpn_convs.3.conv.weight',
        'decode_head.scale_heads.0.0.conv.weight',
        'decode_head.conv_seg.weight',
    ],
    'poolformer': ['.mlp.fc1.weight', 'backbone.stem.conv.weight'],
    'convmixer': [
        'backbone.stem.0.weight',
        'backbone.blocks.0.0.fn.0.weight',
        'backbone.blocks.0.1.weight',
        'backbone.adapter.projs.0.weight',
        'backbone.adapter.refines.0.2.weight',
    ],
}
PARAMWISE_LEAVES = {
    'caformer': 's18',
    'poolformer': 's12',
    'convmixer': '768/32',
}


@pytest.mark.parametrize('family', list(PARAMWISE_LEAVES))
def test_weight_decay_only_on_conv_and_linear_weights(family):
    from mmengine.optim import build_optim_wrapper

    cfg = load(leaf_path(family, PARAMWISE_LEAVES[family]))
    model = build_model(cfg.model, device='meta')
    optim_wrapper = build_optim_wrapper(
        model, copy.deepcopy(cfg.optim_wrapper)
    )
    settings = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            settings[id(param)] = (group['lr'], group['weight_decay'])
    decay = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # not in the optimiser (e.g. RandFormer's matrix)
        lr, weight_decay = settings[id(param)]
        assert lr == 2e-4, name
        # The rule: conv/linear weights decay, every 1-D tensor does not.
        assert weight_decay == (1e-4 if param.ndim >= 2 else 0.0), name
        decay[name] = weight_decay
    assert len(decay) == len(settings)
    for fragment in NO_DECAY[family]:
        hits = [n for n in decay if fragment in n]
        assert hits and all(decay[n] == 0.0 for n in hits), fragment
    for fragment in DECAY[family]:
        hits = [n for n in decay if fragment in n]
        assert hits and all(decay[n] == 1e-4 for n in hits), fragment


# --------------------------------------------------------------------------
# The toy config and a run through tools/train.py and tools/test.py
# --------------------------------------------------------------------------


def test_toy_config_changes_only_the_toy_parts():
    leaf = load(leaf_path('poolformer', 's12'))
    toy = load(TOY_CONFIG)
    # The network is the leaf's, trained from scratch at 128x128, with the
    # neck and head narrowed and the 10 classes the toy scenes show.
    expected_model = copy.deepcopy(leaf.model.to_dict())
    expected_model['backbone']['init_cfg'] = None
    expected_model['data_preprocessor']['size'] = (128, 128)
    expected_model['neck']['out_channels'] = 128
    expected_model['decode_head'].update(
        in_channels=[128] * 4, channels=64, num_classes=10
    )
    assert toy.model.to_dict() == expected_model
    # exactly the classes the generator draws, in ADE20K's order
    from mmmetaformer_tools.toy import ADE_LABELS

    classes = toy.train_dataloader.dataset.metainfo.classes
    assert list(classes) == sorted(ADE_LABELS, key=ADE_LABELS.get)
    for loader in ('val_dataloader', 'test_dataloader'):
        assert toy[loader].dataset.metainfo.classes == classes
    assert toy.optim_wrapper.optimizer.type == 'AdamW'
    assert toy.optim_wrapper.paramwise_cfg == leaf.optim_wrapper.paramwise_cfg
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert toy[loader].dataset.data_root == 'data/toy_ade20k'
        assert toy[loader].dataset.type == 'ADE20KDataset'
        assert toy[loader].num_workers == 0
    crop = step(toy.train_dataloader.dataset.pipeline, 'RandomCrop')
    assert tuple(crop.crop_size) == (128, 128)
    assert toy.train_cfg.max_iters == toy.param_scheduler[-1].end


@pytest.fixture(scope='module')
def toy_ade20k(tmp_path_factory):
    from mmmetaformer_tools.toy import make_ade20k

    return make_ade20k(
        tmp_path_factory.mktemp('toy_ade20k'),
        num_train=8,
        num_val=4,
        img_size=96,
        seed=0,
    )


def data_root_options(root, loaders):
    return [f'{loader}.dataset.data_root={root}' for loader in loaders]


METRIC_LINE = re.compile(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)')


def metrics_of(proc):
    found = METRIC_LINE.findall(proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-3000:]
    values = [float(v) for v in found[-1]]
    assert all(0.0 <= v <= 100.0 for v in values)
    return values


@pytest.fixture(scope='module')
def toy_seg_run(toy_ade20k, tmp_path_factory):
    """Train the toy config with a tiny backbone and heads (its checkpoint
    ~1 MB instead of ~60: the tools, not the model's size, are the
    subject) 4 iterations; ``(process, checkpoint, config)``."""
    work_dir = tmp_path_factory.mktemp('toy_seg_work')
    config = tiny_config(work_dir, 'semantic_fpn')
    proc = run_tool(
        'train.py',
        config,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *data_root_options(
            toy_ade20k,
            ('train_dataloader', 'val_dataloader', 'test_dataloader'),
        ),
        'train_cfg.max_iters=4',
        'train_cfg.val_interval=4',
        'default_hooks.checkpoint.interval=4',
        # weights only: the checkpoint feeds test.py, nothing resumes
        'default_hooks.checkpoint.save_optimizer=False',
        'train_dataloader.batch_size=2',
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc, work_dir / 'iter_4.pth', config


def test_toy_train_saves_checkpoint_and_validates(toy_seg_run):
    proc, checkpoint, _ = toy_seg_run
    assert checkpoint.is_file()
    metrics_of(proc)  # validation ran with IoUMetric


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_toy_test_reports_iou_metric(toy_ade20k, toy_seg_run, mode, tmp_path):
    extra = (
        []
        if mode == 'whole'
        else [
            'model.test_cfg.mode=slide',
            'model.test_cfg.crop_size=[64,64]',
            'model.test_cfg.stride=[48,48]',
        ]
    )
    _, checkpoint, config = toy_seg_run
    proc = run_tool(
        'test.py',
        config,
        checkpoint,
        '--work-dir',
        tmp_path,
        '--cfg-options',
        *data_root_options(toy_ade20k, ('test_dataloader',)),
        *extra,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    metrics_of(proc)
    out = proc.stdout + proc.stderr
    # the per-class table: one row per class with IoU and Acc columns
    assert re.search(r'\|\s*Class\s*\|\s*IoU\s*\|\s*Acc\s*\|', out)
    assert re.search(r'\|\s*sky\s*\|\s*[\d.]+\s*\|\s*[\d.]+\s*\|', out)
    used = Config.fromfile(str(tmp_path / config.name))
    assert used.model.test_cfg.mode == mode


def test_infer_writes_segmentation_overlay(toy_ade20k, toy_seg_run, tmp_path):
    import mmcv

    image = sorted((toy_ade20k / 'images' / 'validation').glob('*.jpg'))[0]
    out_file = tmp_path / 'overlay.jpg'
    proc = run_tool(
        'infer.py',
        image,
        toy_seg_run[2],
        toy_seg_run[1],
        '--out',
        out_file,
        cwd=tmp_path,
    )  # its default --out-dir too
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.search(r'\d+ classes predicted; wrote ', proc.stdout)
    drawn = mmcv.imread(str(out_file))
    original = mmcv.imread(str(image))
    assert drawn.shape == original.shape
    # an overlay, not the input copied through
    assert abs(drawn.astype(float) - original.astype(float)).mean() > 1.0


def test_benchmark_segmentation_with_checkpoint(toy_ade20k, toy_seg_run):
    _, checkpoint, config = toy_seg_run
    proc = run_tool(
        'analysis/benchmark.py',
        config,
        checkpoint,
        '--num-images',
        '3',
        '--warmup',
        '1',
        '--threads',
        '1',
        '--cfg-options',
        *data_root_options(toy_ade20k, ('test_dataloader',)),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    row = benchmark_row(proc.stdout, config.name)
    assert row[1:3] == ['cpu', '3']
    assert '- torch threads: 1' in proc.stdout


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_missing_data_root_is_a_clear_error(tool, tmp_path):
    missing = tmp_path / 'no_ade20k_here'
    loader = 'train_dataloader' if tool == 'train.py' else 'test_dataloader'
    args = [leaf_path('poolformer', 's12')]
    if tool == 'test.py':
        args.append(tmp_path / 'model.pth')
    proc = run_tool(
        tool, *args, '--cfg-options', f'{loader}.dataset.data_root={missing}'
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(missing) in proc.stderr
    assert 'tools/misc/make_toy_dataset.py ade20k' in proc.stderr
    assert 'Traceback' not in proc.stderr


# --------------------------------------------------------------------------
# Drop-in use from a stock mmseg config
# --------------------------------------------------------------------------


def test_stock_upernet_config_with_convformer_drop_in(tmp_path):
    """A fresh process, so mmmetaformer is imported by ``custom_imports``
    alone. SyncBN is left in: outside a process group torch runs it as BN,
    on CPU too."""
    script = textwrap.dedent(f"""
        import sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'mmmetaformer' not in sys.modules
        cfg = Config.fromfile({str(DROP_IN_CONFIG)!r})
        assert 'mmmetaformer' in sys.modules
        init_default_scope(cfg.default_scope)
        from mmengine.structures import PixelData
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample
        model = MODELS.build(cfg.model)
        samples = []
        for _ in range(2):
            s = SegDataSample(gt_sem_seg=PixelData(
                data=torch.randint(0, 150, (1, 64, 64))))
            s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64)))
            samples.append(s)
        losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
        assert all(torch.isfinite(losses[k]) for k in losses), losses
        print(type(model.backbone).__name__,
              type(model.decode_head.bottleneck.norm).__name__,
              ' '.join(sorted(k for k in losses if 'loss' in k)))
    """)
    proc = subprocess.run(
        [sys.executable, '-c', script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        'ConvFormer SyncBatchNorm aux.loss_ce decode.loss_ce'
    )
