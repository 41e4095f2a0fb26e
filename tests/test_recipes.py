"""The ConvNeXt-style recipes: UperNet 160k ADE20K and Cascade Mask R-CNN
3x COCO for ConvFormer and CAFormer, S18..B36.

- Every one of the 16 leaves carries its recipe (the table below is the
  specification, with the ConvNeXt config each value comes from), is
  built on the ``meta`` device (no memory, no arithmetic) with its heads
  taking the backbone's real channels, and its optimizer groups are built
  by the configured layer-decay constructor: the stem trains at the
  ConvNeXt peer's stem rate, the heads at the base lr.
- Real loss + backward and predict forwards for S18 leaves (the bigger
  leaves differ only in arch, channels and numbers the first test
  checks); Cascade's RoI counts are cut for CPU time.
- A toy UperNet run (ConvFormer-S18's depths, narrow widths) of 2
  iterations through tools/train.py with the
  constructor on: its groups are logged and their lr ratios survive the
  Runner's schedulers into the checkpoint.
"""

import copy
import functools
import math

from mmmetaformer_tools.toy import make_ade20k

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmmetaformer  # noqa: F401
from mmmetaformer.engine import sync_bn_to_bn
from mmmetaformer.models.archs import CONVFORMER_SIZES, pretrained_url
from tests.helpers import REPO_ROOT, pretrained_checkpoint, run_tool

CONFIGS = REPO_ROOT / 'configs'
FAMILIES = dict(convformer='ConvFormer', caformer='CAFormer')
SIZES = ('s18', 's36', 'm36', 'b36')
# The authors publish ImageNet-21k -> 1k weights; used for these sizes.
IN21K_SIZES = ('m36', 'b36')
# size -> (drop path, num_layers); stage-wise 0.9, AdamW 1e-4 / 0.05.
# mmseg convnext-{tiny,small,base}_upernet_8xb2-amp-160k_ade20k-512x512:
# S18 ~ T, S36/M36 ~ S, B36 ~ B.
UPERNET = dict(s18=(0.4, 6), s36=(0.3, 12), m36=(0.3, 12), b36=(0.4, 12))
# size -> (drop path, ConvNeXt rate, its layer groups + 1, lr): mmdet
# convnext cascade T (0.7, 6 groups) and S (0.7, 12); B36 from the
# ConvNeXt authors' cascade B IN-22k config (0.8, 12, lr 1e-4).
CASCADE = dict(
    s18=(0.4, 0.7, 7, 2e-4),
    s36=(0.6, 0.7, 13, 2e-4),
    m36=(0.6, 0.7, 13, 2e-4),
    b36=(0.6, 0.8, 13, 1e-4),
)
LEAVES = [
    (task, family, size)
    for task in ('upernet', 'cascade')
    for family in FAMILIES
    for size in SIZES
]
LEAF_IDS = [f'{t}-{f}-{s}' for t, f, s in LEAVES]


def leaf_path(task, family, size):
    if task == 'upernet':
        return CONFIGS / f'upernet_{family}_{size}_ade20k.py'
    return CONFIGS / f'cascade_mask_rcnn_{family}_{size}_coco.py'


@functools.cache
def load(path):
    """Cached: parsing mmdet::/mmseg:: bases takes a second. Read only."""
    return Config.fromfile(str(path))


def expected_checkpoint(task, family, size):
    """The Hub id of the weights the leaf starts from: ImageNet-21k -> 1k
    for ``IN21K_SIZES`` (timm's ``sail_in22k_ft_in1k`` copy of the
    authors' ``{family}_{size}_in21ft1k.pth``), ImageNet-1k otherwise."""
    variant = 'in21ft1k' if size in IN21K_SIZES else None
    hub_id = pretrained_checkpoint(
        leaf_path(task, family, size), family, size, variant
    )
    if variant:  # the id literally names the 22k -> 1k weights
        assert hub_id == f'hf-hub:timm/{family}_{size}.sail_in22k_ft_in1k'
        assert pretrained_url(family, size, variant).endswith(
            f'/{family}/{family}_{size}_in21ft1k.pth'
        )
    return hub_id


def by_type(pipeline, type_name):
    found = [t for t in pipeline if t['type'] == type_name]
    assert len(found) == 1, (type_name, pipeline)
    return found[0]


def build(cfg, scope, device=None):
    """The model of ``cfg`` as the tools build it on CPU (SyncBN -> BN),
    without loading weights."""
    from mmengine.registry import MODELS

    init_default_scope(scope)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    sync_bn_to_bn(model_cfg)
    if device is None:
        return MODELS.build(model_cfg)
    with torch.device(device):
        return MODELS.build(model_cfg)


def test_sixteen_leaves():
    found = sorted(
        p.name for p in CONFIGS.glob('upernet_*_ade20k.py')
    ) + sorted(p.name for p in CONFIGS.glob('cascade_mask_rcnn_*_coco.py'))
    assert sorted(found) == sorted(leaf_path(*leaf).name for leaf in LEAVES)


def check_upernet_recipe(cfg, size, dims):
    drop_path, num_layers = UPERNET[size]
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.backbone.drop_path_rate == drop_path
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and list(head.in_channels) == dims
    assert (head.channels, tuple(head.pool_scales), head.num_classes) == (
        512,
        (1, 2, 3, 6),
        150,
    )
    assert aux.type == 'FCNHead' and aux.in_index == 2  # stage 3
    assert aux.in_channels == dims[2] and aux.num_classes == 150
    assert aux.loss_decode.loss_weight == 0.4
    assert cfg.model.test_cfg == dict(
        mode='slide', crop_size=(512, 512), stride=(341, 341)
    )
    assert tuple(cfg.model.data_preprocessor.size) == (512, 512)
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert tuple(by_type(pipeline, 'RandomCrop').crop_size) == (512, 512)
    assert tuple(by_type(pipeline, 'RandomResize').scale) == (2048, 512)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05
    )
    assert cfg.optim_wrapper.paramwise_cfg == dict(
        decay_rate=0.9, decay_type='stage_wise', num_layers=num_layers
    )
    warmup, poly = cfg.param_scheduler
    assert (
        warmup.type,
        warmup.start_factor,
        warmup.begin,
        warmup.end,
        warmup.by_epoch,
    ) == ('LinearLR', 1e-6, 0, 1500, False)
    assert (
        poly.type,
        poly.power,
        poly.eta_min,
        poly.begin,
        poly.end,
        poly.by_epoch,
    ) == ('PolyLR', 1.0, 0.0, 1500, 160000, False)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == 160000
    return 1e-4, 0.9, num_layers


def check_cascade_recipe(cfg, size, dims):
    drop_path, convnext_rate, convnext_span, lr = CASCADE[size]
    num_layers = sum(CONVFORMER_SIZES[size]['depths'])
    assert cfg.default_scope == 'mmdet'
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.model.type == 'CascadeRCNN'
    assert list(cfg.model.neck.in_channels) == dims
    bbox_heads = cfg.model.roi_head.bbox_head
    assert len(bbox_heads) == 3
    for bbox_head in bbox_heads:
        assert (
            bbox_head.type,
            bbox_head.num_shared_convs,
            bbox_head.num_shared_fcs,
        ) == ('ConvFCBBoxHead', 4, 1)
        assert bbox_head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
    assert cfg.model.roi_head.mask_head.type == 'FCNMaskHead'
    # Multi-scale training: shorter side 480..800, or resize-crop-resize.
    pipeline = cfg.train_dataloader.dataset.pipeline
    choice = by_type(pipeline, 'RandomChoice')
    plain, cropped = choice.transforms
    assert [tuple(s) for s in plain[0].scales] == [
        (s, 1333) for s in range(480, 801, 32)
    ]
    assert by_type(cropped, 'RandomCrop').crop_size == (384, 600)
    by_type(pipeline, 'RandomFlip')
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == (
        'LinearLR',
        0.001,
        1000,
    )
    assert (steps.type, list(steps.milestones)) == ('MultiStepLR', [27, 33])
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05
    )
    rate = convnext_rate ** (convnext_span / (num_layers + 1))
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert paramwise.decay_type == 'layer_wise'
    assert paramwise.num_layers == num_layers
    assert paramwise.decay_rate == pytest.approx(rate, rel=1e-12)
    assert set(paramwise) == {'decay_type', 'decay_rate', 'num_layers'}
    return lr, rate, num_layers


@pytest.mark.parametrize('task,family,size', LEAVES, ids=LEAF_IDS)
def test_leaf_recipe_model_and_groups(task, family, size):
    cfg = load(leaf_path(task, family, size))
    dims = CONVFORMER_SIZES[size]['dims']
    assert cfg.custom_imports == dict(
        imports=['mmmetaformer'], allow_failed_imports=False
    )
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch) == (FAMILIES[family], size)
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=expected_checkpoint(task, family, size)
    )
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # --amp for AMP
    assert cfg.optim_wrapper.constructor == 'MetaFormerLayerDecayConstructor'
    if task == 'upernet':
        lr, rate, num_layers = check_upernet_recipe(cfg, size, dims)
        scope = 'mmseg'
    else:
        lr, rate, num_layers = check_cascade_recipe(cfg, size, dims)
        scope = 'mmdet'

    # Built on meta: the heads take what the backbone emits, and a meta
    # forward (shapes only) goes through backbone, neck and heads.
    model = build(cfg, scope, device='meta')
    assert list(model.backbone.out_channels) == dims
    model.eval()
    image = torch.empty(1, 3, 64, 96, device='meta')
    if task == 'upernet':
        assert model(image, mode='tensor').shape == (1, 150, 16, 24)
    else:  # FPN P2..P6; the RoI heads need real boxes (tested below)
        feats = model.extract_feat(image)
        assert [tuple(f.shape[1:]) for f in feats] == [
            (256, 16, 24),
            (256, 8, 12),
            (256, 4, 6),
            (256, 2, 3),
            (256, 1, 2),
        ]
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        lrs.setdefault(group['layer_id'], group['lr'])
        assert group['weight_decay'] == (
            0.05 if group['params'][0].ndim > 1 else 0.0
        )
    top = 4 if task == 'upernet' else num_layers
    assert sorted(lrs) == list(range(top + 1)) + [num_layers + 1]
    assert lrs[num_layers + 1] == lr  # neck and heads
    assert lrs[0] == pytest.approx(lr * rate ** (num_layers + 1))  # stem
    if task == 'cascade':  # the ConvNeXt peer's stem rate
        _, convnext_rate, convnext_span, _ = CASCADE[size]
        assert lrs[0] == pytest.approx(lr * convnext_rate**convnext_span)
    else:  # stage i at ConvNeXt's stage-wise rate for the same num_layers
        for stage in range(4):
            assert lrs[stage + 1] == pytest.approx(
                lr * 0.9 ** (num_layers - stage)
            )


# --------------------------------------------------------------------------
# Real forwards, S18: UperNet with CAFormer, Cascade with ConvFormer (the
# other pairings differ only in the backbone's mixers, whose arithmetic
# tests/test_backbones.py checks; the leaf test builds them on meta)
# --------------------------------------------------------------------------


def test_upernet_caformer_s18_loss_and_predict():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg = load(leaf_path('upernet', 'caformer', 's18'))
    torch.manual_seed(0)
    model = build(cfg, 'mmseg')
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64)))
        )
        sample.set_metainfo(
            dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))
        )
        samples.append(sample)
    model.train()
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    assert set(losses) == {
        'decode.loss_ce',
        'decode.acc_seg',
        'aux.loss_ce',
        'aux.acc_seg',
    }
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    head_weight = model.decode_head.conv_seg.weight
    stem_weight = model.backbone.stem.conv.weight
    assert head_weight.grad.abs().sum() > 0 and stem_weight.grad is not None

    model.eval()
    image = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8)
    with torch.no_grad():  # slide inference (one window at this size)
        pred = model.test_step(
            dict(inputs=[image], data_samples=[samples[0]])
        )[0]
    assert pred.pred_sem_seg.data.shape == (1, 64, 64)
    assert pred.seg_logits.data.shape == (150, 64, 64)


def test_cascade_convformer_s18_loss_and_predict():
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    cfg = copy.deepcopy(load(leaf_path('cascade', 'convformer', 's18')))
    # CPU time: a few RoIs per stage instead of 2000 proposals / 512 samples
    # (train) and 1000 proposals / 100 detections (test); the network is
    # unchanged.
    cfg.model.train_cfg.rpn_proposal.max_per_img = 64
    for stage_cfg in cfg.model.train_cfg.rcnn:
        stage_cfg.sampler.num = 16
    cfg.model.test_cfg.rpn.max_per_img = 16
    cfg.model.test_cfg.rcnn.max_per_img = 8
    torch.manual_seed(0)
    model = build(cfg, 'mmdet')
    size = 96
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(size, size),
            ori_shape=(size, size),
            pad_shape=(size, size),
            batch_input_shape=(size, size),
            scale_factor=(1.0, 1.0),
        )
    )
    gt = InstanceData()
    gt.bboxes = torch.tensor([[8.0, 10.0, 60.0, 70.0]])
    gt.labels = torch.tensor([3])
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, 10:70, 8:60] = 1
    gt.masks = BitmapMasks(mask.numpy(), size, size)
    sample.gt_instances = gt
    inputs = torch.rand(1, 3, size, size)

    model.train()
    losses = model(inputs, [sample], mode='loss')
    for stage in range(3):
        for name in ('loss_cls', 'loss_bbox', 'loss_mask'):
            assert f's{stage}.{name}' in losses
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stem.conv.weight.grad is not None

    model.eval()
    with torch.no_grad():
        pred = model(inputs, [sample], mode='predict')[0].pred_instances
    assert pred.bboxes.shape[-1] == 4
    assert pred.masks.shape[-2:] == (size, size)


# --------------------------------------------------------------------------
# Through tools/train.py
# --------------------------------------------------------------------------


TOY_UPERNET = CONFIGS / 'toy' / 'upernet_convformer_s18_toy_ade20k.py'


def test_toy_upernet_run_with_layer_decay(tmp_path):
    data = make_ade20k(
        tmp_path / 'toy_ade20k', num_train=4, num_val=2, img_size=96
    )
    work_dir = tmp_path / 'work'
    # ConvFormer-S18's depths (the stages the decay groups follow) at narrow
    # widths, and narrow heads: the saved optimizer state is what is read,
    # and the recipe's widths would make it 600 MB.
    config = tmp_path / 'upernet_convformer_s18_narrow_toy_ade20k.py'
    config.write_text(
        f'_base_ = [{str(TOY_UPERNET)!r}]\n'
        'model = dict(\n'
        '    backbone=dict(arch=dict(_delete_=True, depths=[3, 3, 9, 3],\n'
        '                            dims=[16, 32, 64, 64])),\n'
        '    decode_head=dict(in_channels=[16, 32, 64, 64], channels=32),\n'
        '    auxiliary_head=dict(in_channels=64, channels=32))\n'
    )
    proc = run_tool(
        'train.py',
        config,
        '--work-dir',
        work_dir,
        '--cfg-options',
        'train_cfg.max_iters=2',
        'train_cfg.val_interval=2',
        'train_dataloader.batch_size=2',
        *[
            f'{loader}.dataset.data_root={data}'
            for loader in (
                'train_dataloader',
                'val_dataloader',
                'test_dataloader',
            )
        ],
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    # The constructor's groups are logged: stem 0, stages 1..4, heads 7.
    assert (
        'MetaFormerLayerDecayConstructor: ConvFormer([3, 3, 9, 3]), '
        'decay_type=stage_wise, decay_rate=0.9, num_layers=6'
    ) in output
    for layer in (0, 1, 2, 3, 4, 7):
        assert f'  layer_{layer}_decay: lr_scale=' in output
    assert 'mIoU' in output  # validated at the end

    state = torch.load(
        work_dir / 'iter_2.pth', map_location='cpu', weights_only=False
    )
    groups = state['optimizer']['param_groups']
    assert sorted({g['layer_id'] for g in groups}) == [0, 1, 2, 3, 4, 7]
    base_lr = Config.fromfile(TOY_UPERNET).optim_wrapper.optimizer.lr
    factor = groups[0]['lr'] / groups[0]['initial_lr']
    assert 0 < factor < 1  # in warmup
    for group in groups:
        scale = 0.9 ** (7 - group['layer_id'])
        assert group['lr_scale'] == pytest.approx(scale)
        assert group['initial_lr'] == pytest.approx(base_lr * scale)
        # The schedulers scale every group alike: the decay survives.
        assert group['lr'] == pytest.approx(factor * base_lr * scale)
    assert math.isclose(max(g['lr_scale'] for g in groups), 1.0)
