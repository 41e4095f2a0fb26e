"""DINO 4-scale (COCO), Mask2Former (ADE20K semantic, COCO instance) for
ConvFormer and CAFormer.

- Every leaf (3 recipes x 2 families x S18..B36) is its base plus what it
  sets itself (read without resolving the mmdet/mmseg chain): the backbone
  type, arch, ImageNet weights and drop path, the neck's or pixel
  decoder's ``in_channels`` equal to what that backbone emits (built on
  the ``meta`` device) and the layer decay; one leaf per head is parsed
  in full and equals that merge.
- Each base carries the head's own mmdet/mmseg recipe, with the layer-decay
  constructor in place of the flat backbone lr_mult.
- The head's share of the parameters equals mmdet's DINO R-50, mmseg's
  Mask2Former R-50 and mmdet's Mask2Former R-50 instance configs, tensor
  by tensor: only the input projections
  that read the backbone differ, and only in their input channels.
- Toy DINO and toy Mask2Former (with a tiny backbone of the same family)
  train 4 iterations on one repeated batch through tools/train.py (loss
  lower at the end, the constructor's groups logged, a checkpoint), and
  tools/test.py scores the checkpoint (COCO box mAP, mIoU).
"""

import copy
import functools
import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope
from mmengine.utils import get_installed_path

import mmmetaformer  # noqa: F401
from mmmetaformer.engine import sync_bn_to_bn
from mmmetaformer.models.archs import CONVFORMER_SIZES
from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES

from .helpers import (
    REPO_ROOT,
    TINY_ARCH,
    TINY_DIMS,
    merged_into,
    own_settings,
    pretrained_checkpoint,
    run_tool,
)

CONFIGS = REPO_ROOT / 'configs'
FAMILIES = ('convformer', 'caformer')
SIZES = ('s18', 's36', 'm36', 'b36')
IN21K_SIZES = ('m36', 'b36')  # IN-21k -> 1k weights, as the other leaves
HEADS = dict(
    dino=('dino_4scale_{}_{}_coco.py', 'dino_4scale_coco.py', 'mmdet'),
    mask2former=(
        'mask2former_{}_{}_ade20k.py',
        'mask2former_ade20k.py',
        'mmseg',
    ),
    mask2former_coco=(
        'mask2former_{}_{}_coco.py',
        'mask2former_coco.py',
        'mmdet',
    ),
)
# where each Mask2Former recipe keeps its head (mmseg: a decode head;
# mmdet: the panoptic head, here with stuff classes off)
MASK2FORMER_HEAD = dict(
    mask2former='decode_head', mask2former_coco='panoptic_head'
)
LEAVES = [
    (head, family, size)
    for head in HEADS
    for family in FAMILIES
    for size in SIZES
]
LEAF_IDS = [f'{h}-{f}-{s}' for h, f, s in LEAVES]
# size -> (drop path, decay rate, num_layers), from the Cascade Mask R-CNN
# (DINO) and UperNet (Mask2Former, ADE20K and COCO alike) leaves of the
# same backbone.
DINO = dict(
    s18=(0.4, 0.7 ** (7 / 19), 18),
    s36=(0.6, 0.7 ** (13 / 37), 36),
    m36=(0.6, 0.7 ** (13 / 37), 36),
    b36=(0.6, 0.8 ** (13 / 37), 36),
)
MASK2FORMER = dict(
    s18=(0.4, 0.9, 6),
    s36=(0.3, 0.9, 12),
    m36=(0.3, 0.9, 12),
    b36=(0.4, 0.9, 12),
)
TOY = dict(
    dino=CONFIGS / 'toy' / 'dino_4scale_convformer_s18_toy_coco.py',
    mask2former=CONFIGS / 'toy' / 'mask2former_caformer_s18_toy_ade20k.py',
)


def leaf_path(head, family, size):
    return CONFIGS / HEADS[head][0].format(family, size)


@functools.cache
def load(path):
    """Parsed once (the mmdet::/mmseg:: chain takes a second). Read only."""
    return Config.fromfile(str(path))


def base_of(head):
    return load(CONFIGS / '_base_' / HEADS[head][1])


def build(model_cfg, scope, device='meta'):
    """The model as the tools build it on CPU (SyncBN -> BN), no weights."""
    from mmengine.registry import MODELS

    init_default_scope(scope)
    # ConfigDict: mmdet's Mask2FormerHead reads its config by attribute
    model_cfg = ConfigDict(copy.deepcopy(model_cfg))
    model_cfg.backbone.init_cfg = None
    sync_bn_to_bn(model_cfg)
    with torch.device(device):
        return MODELS.build(model_cfg)


# ---------------------------------------------------------------------------
# Recipes and leaves
# ---------------------------------------------------------------------------


def test_every_leaf_is_listed():
    found = [
        p.name
        for pattern in (
            'dino_4scale_*_coco.py',
            'mask2former_*_ade20k.py',
            'mask2former_*_coco.py',
        )
        for p in CONFIGS.glob(pattern)
    ]
    assert len(found) == 24
    assert sorted(found) == sorted(leaf_path(*leaf).name for leaf in LEAVES)


def test_dino_base_is_mmdet_recipe():
    cfg = base_of('dino')
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(
        imports=['mmmetaformer'], allow_failed_imports=False
    )
    model = cfg.model
    assert model.type == 'DINO' and model.num_queries == 900
    assert model.with_box_refine and model.as_two_stage
    assert model.backbone == dict(type=None, out_indices=(1, 2, 3))
    neck = model.neck
    assert (neck.type, neck.out_channels, neck.num_outs, neck.kernel_size) == (
        'ChannelMapper',
        256,
        4,
        1,
    )
    assert (model.encoder.num_layers, model.decoder.num_layers) == (6, 6)
    assert model.encoder.layer_cfg.self_attn_cfg.num_levels == 4
    assert model.bbox_head.num_classes == 80
    assert model.dn_cfg.group_cfg.num_dn_queries == 100
    assert cfg.train_cfg.max_epochs == 12
    (steps,) = cfg.param_scheduler
    assert (steps.type, list(steps.milestones)) == ('MultiStepLR', [11])
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    optim = cfg.optim_wrapper
    assert optim.optimizer == dict(type='AdamW', lr=1e-4, weight_decay=1e-4)
    assert optim.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert optim.constructor == 'MetaFormerLayerDecayConstructor'
    assert optim.paramwise_cfg == dict(decay_type='layer_wise')


def test_mask2former_base_is_mmseg_recipe():
    cfg = base_of('mask2former')
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(
        imports=['mmmetaformer'], allow_failed_imports=False
    )
    model = cfg.model
    assert model.backbone == dict(type=None)  # all four stages by default
    head = model.decode_head
    assert (
        head.type,
        head.num_queries,
        head.num_classes,
        head.feat_channels,
    ) == ('Mask2FormerHead', 100, 150, 256)
    assert head.pixel_decoder.encoder.num_layers == 6
    assert head.transformer_decoder.num_layers == 9
    assert head.train_cfg.num_points == 12544
    assert tuple(model.data_preprocessor.size) == (512, 512)
    assert cfg.train_cfg.max_iters == 160000
    (poly,) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.end) == ('PolyLR', 0.9, 160000)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert_mask2former_optimizer(cfg.optim_wrapper)


def assert_mask2former_optimizer(optim):
    """The Mask2Former recipes' optimizer (ADE20K and COCO alike), with
    stage-wise layer decay for the MetaFormer backbone."""
    assert optim.optimizer == dict(
        type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)
    )
    assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    assert optim.constructor == 'MetaFormerLayerDecayConstructor'
    assert optim.paramwise_cfg == dict(decay_rate=0.9, decay_type='stage_wise')


def test_mask2former_coco_base_is_mmdet_instance_recipe():
    cfg = base_of('mask2former_coco')
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(
        imports=['mmmetaformer'], allow_failed_imports=False
    )
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert [h['type'] for h in cfg.custom_hooks] == [
        'ExactResumeHook',
        'NaNGuardHook',
    ]
    model = cfg.model
    assert model.type == 'Mask2Former'
    assert model.backbone == dict(type=None)  # all four stages by default
    head = model.panoptic_head
    assert (
        head.type,
        head.num_queries,
        head.num_things_classes,
        head.num_stuff_classes,
        head.feat_channels,
    ) == ('Mask2FormerHead', 100, 80, 0, 256)
    assert head.in_channels is None  # every leaf sets it
    assert head.pixel_decoder.encoder.num_layers == 6
    assert head.transformer_decoder.num_layers == 9
    assert model.train_cfg.num_points == 12544
    # instance segmentation only, as the recipe
    assert (model.test_cfg.panoptic_on, model.test_cfg.instance_on) == (
        False,
        True,
    )
    assert cfg.val_evaluator.type == 'CocoMetric'
    assert list(cfg.val_evaluator.metric) == ['bbox', 'segm']
    (crop,) = [
        t for t in cfg.train_pipeline if t['type'] == 'RandomCrop'
    ]  # large-scale jittering
    assert tuple(crop['crop_size']) == (1024, 1024)
    assert cfg.train_cfg.max_iters == 368750
    steps = cfg.param_scheduler  # one scheduler, not a list
    assert (steps.type, list(steps.milestones)) == (
        'MultiStepLR',
        [327778, 355092],
    )
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert_mask2former_optimizer(cfg.optim_wrapper)


@pytest.mark.parametrize('head,family,size', LEAVES, ids=LEAF_IDS)
def test_leaf_settings_and_meta_build(head, family, size):
    """What the leaf sets, and its heads take its backbone's channels."""
    path = leaf_path(head, family, size)
    own = own_settings(path)
    assert own['_base_'] == [f'./_base_/{HEADS[head][1]}']
    assert set(own) == {'_base_', 'checkpoint_file', 'model', 'optim_wrapper'}
    backbone = own['model']['backbone']
    hub_id = pretrained_checkpoint(
        path, family, size, 'in21ft1k' if size in IN21K_SIZES else None
    )
    drop_path, rate, num_layers = (DINO if head == 'dino' else MASK2FORMER)[
        size
    ]
    assert backbone == dict(
        type=FAMILY_CLASSES[family],
        arch=size,
        drop_path_rate=drop_path,
        init_cfg=dict(type='Pretrained', checkpoint=hub_id),
    )
    paramwise = own['optim_wrapper']['paramwise_cfg']
    dims = CONVFORMER_SIZES[size]['dims']
    if head == 'dino':
        assert set(own['model']) == {'backbone', 'neck'}
        assert own['model']['neck'] == dict(in_channels=dims[1:])
        assert paramwise['decay_rate'] == pytest.approx(rate, rel=1e-12)
        assert paramwise['num_layers'] == num_layers
    else:
        head_key = MASK2FORMER_HEAD[head]
        assert set(own['model']) == {'backbone', head_key}
        assert own['model'][head_key] == dict(in_channels=dims)
        assert paramwise == dict(num_layers=num_layers)

    # Built on meta: no memory, no arithmetic; in_channels must match
    # what the backbone emits or the build fails.
    cfg = merged_into(base_of(head).to_dict(), own)
    model = build(cfg['model'], HEADS[head][2])
    emitted = dims[1:] if head == 'dino' else dims
    assert list(model.backbone.out_channels) == emitted
    assert set(model.backbone.out_norms) == {
        str(i) for i in model.backbone.out_indices
    }


@pytest.mark.parametrize('head', list(HEADS))
def test_one_leaf_per_head_parsed_in_full(head):
    own = own_settings(leaf_path(head, 'caformer', 's36'))
    full = load(leaf_path(head, 'caformer', 's36')).to_dict()
    expected = merged_into(base_of(head).to_dict(), own)
    for key in (
        'model',
        'optim_wrapper',
        'train_cfg',
        'param_scheduler',
        'train_dataloader',
        'custom_imports',
        'custom_hooks',
    ):
        assert full[key] == expected[key], key


# ---------------------------------------------------------------------------
# The head's share equals mmdet's / mmseg's own R-50 configs
# ---------------------------------------------------------------------------

# The input projections (module prefixes): the only tensors outside the
# backbone whose shapes depend on it.
INPUT_PROJECTIONS = dict(
    dino=('neck.convs.', 'neck.extra_convs.'),
    mask2former=(
        'decode_head.pixel_decoder.input_convs.',
        'decode_head.pixel_decoder.lateral_convs.',
    ),
    mask2former_coco=(
        'panoptic_head.pixel_decoder.input_convs.',
        'panoptic_head.pixel_decoder.lateral_convs.',
    ),
)
REFERENCE = dict(
    dino=('mmdet', 'dino/dino-4scale_r50_8xb2-12e_coco.py'),
    mask2former=(
        'mmseg',
        'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    ),
    mask2former_coco=(
        'mmdet',
        'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    ),
)
# the leaf compared with the R-50 config, one per recipe
SHARE_LEAF = dict(
    dino=('convformer', 'b36'),
    mask2former=('caformer', 'm36'),
    mask2former_coco=('convformer', 's36'),
)


def reference_config(head):
    """The installed mmdet/mmseg config the head's base inherits."""
    package, name = REFERENCE[head]
    return Path(get_installed_path(package)) / '.mim' / 'configs' / name


def numel(shapes):
    total = 0
    for shape in shapes:
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def head_tensors(model):
    return {
        name: tuple(p.shape)
        for name, p in model.named_parameters()
        if not name.startswith('backbone.')
    }


@pytest.mark.parametrize('head', list(HEADS))
def test_head_share_equals_reference_recipe(head):
    family, size = SHARE_LEAF[head]
    ours_cfg = load(leaf_path(head, family, size))
    ours = build(ours_cfg.model.to_dict(), HEADS[head][2])
    ref_cfg = load(reference_config(head))
    reference = build(ref_cfg.model.to_dict(), HEADS[head][2])
    mine, theirs = head_tensors(ours), head_tensors(reference)
    assert sorted(mine) == sorted(theirs)
    reads_backbone = [n for n in mine if n.startswith(INPUT_PROJECTIONS[head])]
    assert reads_backbone
    for name in mine:
        if name in reads_backbone and len(mine[name]) == 4:
            # conv weights [out, in, k, k]: only the input channels differ
            assert (
                mine[name][:1] + mine[name][2:]
                == theirs[name][:1] + theirs[name][2:]
            ), name
            assert mine[name][1] in ours.backbone.out_channels
        else:
            assert mine[name] == theirs[name], name
    shared = [n for n in mine if n not in reads_backbone or len(mine[n]) != 4]
    assert numel(mine[n] for n in shared) == numel(theirs[n] for n in shared)
    # what differs is 256 outputs x the input channels x kernel area
    in_ours = sum(
        numel([mine[n]]) for n in reads_backbone if len(mine[n]) == 4
    )
    in_theirs = sum(
        numel([theirs[n]]) for n in reads_backbone if len(theirs[n]) == 4
    )
    dims = list(ours.backbone.out_channels)
    if head == 'dino':
        # 1x1 per input, plus the 3x3 stride-2 extra level on the last
        assert in_ours == 256 * (sum(dims) + 9 * dims[-1])
        assert in_theirs == 256 * (512 + 1024 + 2048 + 9 * 2048)
    else:
        assert in_ours == 256 * sum(dims)
        assert in_theirs == 256 * (256 + 512 + 1024 + 2048)


# ---------------------------------------------------------------------------
# Toy runs through tools/train.py and tools/test.py
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def toy_data(tmp_path_factory):
    from mmmetaformer_tools.toy import make_ade20k, make_coco

    root = tmp_path_factory.mktemp('heads')
    coco = make_coco(
        root / 'toy_coco',
        num_train=2,
        num_val=2,
        img_size=96,
        seed=0,
        max_objects=2,
    )
    ade = make_ade20k(
        root / 'toy_ade20k', num_train=2, num_val=2, img_size=96, seed=0
    )
    return dict(dino=coco, mask2former=ade)


def toy_options(head, root):
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = [f'{loader}.dataset.data_root={root}' for loader in loaders]
    # one batch of the 2 training images, unflipped, 4 times: the loss
    # must fall on what the model has seen
    options += [
        'train_dataloader.batch_size=2',
        'train_cfg.val_begin=5',  # no validation: test.py scores
        'default_hooks.checkpoint.interval=4',
        # the checkpoint only feeds test.py: weights, no optimizer state
        'default_hooks.checkpoint.save_optimizer=False',
        'default_hooks.logger.interval=1',
    ]
    if head == 'dino':
        ann = f'{root}/annotations/instances_val2017.json'
        options += [
            'train_cfg.max_epochs=4',
            f'val_evaluator.ann_file={ann}',
            f'test_evaluator.ann_file={ann}',
            'train_dataloader.dataset.pipeline.3.prob=0.0',
            'param_scheduler.0.start_factor=1.0',  # no warmup in 4 steps
            'model.num_queries=30',
            'model.test_cfg.max_per_img=30',
        ]
    else:
        options += [
            'train_cfg.max_iters=4',
            # no random resize, crop or flip: the same 96 px pictures
            'train_dataloader.dataset.pipeline.2.ratio_range=(0.75,0.75)',
            'train_dataloader.dataset.pipeline.4.prob=0.0',
            'param_scheduler.0.start_factor=1.0',
        ]
    return options


def losses_by_iteration(work_dir):
    (log,) = work_dir.glob('*/vis_data/scalars.json')
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [row['loss'] for row in rows if 'loss' in row]


# What reads the backbone: DINO's ChannelMapper (stages 2..4), the
# Mask2Former pixel decoder (all four stages).
TINY_INPUTS = dict(
    dino=f'neck=dict(in_channels={TINY_DIMS[1:]})',
    mask2former=f'decode_head=dict(in_channels={TINY_DIMS})',
)


def tiny_toy(head, directory):
    """The toy ``head`` config with a tiny backbone of the same family
    (its checkpoint is the heads' ~18 MB, not the S18's ~110 MB: the
    training loop, not the backbone's size, is the subject)."""
    path = directory / f'{head}_tiny_toy.py'
    path.write_text(
        f'_base_ = [{str(TOY[head])!r}]\n'
        'model = dict(\n'
        f'    backbone=dict(arch=dict(_delete_=True, **{TINY_ARCH!r})),\n'
        f'    {TINY_INPUTS[head]})\n'
    )
    return path


@pytest.fixture(scope='module', params=list(TOY))
def toy_run(request, toy_data, tmp_path_factory):
    head = request.param
    work_dir = tmp_path_factory.mktemp(f'{head}_work')
    config = tiny_toy(head, work_dir)
    proc = run_tool(
        'train.py',
        config,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *toy_options(head, toy_data[head]),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return head, work_dir, config, output


def test_toy_trains_with_falling_loss(toy_run):
    head, work_dir, _, output = toy_run
    losses = losses_by_iteration(work_dir)
    assert len(losses) == 4, losses
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses)), losses
    assert losses[-1] < losses[0], losses
    backbone = (
        'ConvFormer([1, 1, 1, 1]), decay_type=layer_wise'
        if head == 'dino'
        else 'CAFormer([1, 1, 1, 1]), decay_type=stage_wise'
    )
    assert f'MetaFormerLayerDecayConstructor: {backbone}' in output
    checkpoint = next(work_dir.glob('*_4.pth'))
    assert checkpoint.is_file()


def test_toy_test_scores_checkpoint(toy_run, toy_data, tmp_path):
    head, work_dir, config, _ = toy_run
    checkpoint = next(work_dir.glob('*_4.pth'))
    proc = run_tool(
        'test.py',
        config,
        checkpoint,
        '--work-dir',
        tmp_path,
        '--cfg-options',
        *toy_options(head, toy_data[head]),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    if head == 'dino':
        assert re.search(r'coco/bbox_mAP: -?\d\.\d+', output)
    else:
        assert re.search(r'mIoU: [\d.]+', output)
    checkpoint.unlink()  # its last reader
