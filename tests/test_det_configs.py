"""Detection configs: the published recipe, every backbone, and the tools.

- Each base (``configs/_base_/{retinanet,mask_rcnn}_coco.py``) carries the
  PoolFormer paper's COCO recipe; it is parsed and checked once.
- Every leaf ``configs/{retinanet,mask_rcnn}_<family>_<arch>_coco.py`` is
  checked for what it sets itself (read without resolving its bases): its
  base, the backbone type and arch, the official ``init_cfg`` URL, and a
  neck taking the backbone's real ``out_channels`` (backbones built on the
  ``meta`` device: no memory, no arithmetic). One leaf per base is parsed
  in full and equals its base plus those settings, so every leaf's recipe
  is its base's.
- Real forwards (loss and predict, one 64x64 image) for the smallest arch
  of each family.
- The RetinaNet choice (backbone stages 1..3 + FPN from level 0) equals the
  published layout (stages 0..3 + FPN from level 1) with shared weights.
- End to end on a tiny toy COCO through the real tools: train, checkpoint,
  resume, test (CocoMetric), 2-rank gloo training, a missing data root,
  the drop-in example and tools/infer.py. The runs use the toy configs
  with a one-block-per-stage backbone and narrow heads (``tiny_config``):
  the tools' path is the same, the checkpoints a few MB instead of
  150-360 MB. Checkpoints that nothing resumes hold the weights only.
"""

import copy
import functools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmmetaformer  # noqa: F401
from mmmetaformer.registry import MODELS

from .helpers import (
    REPO_ROOT,
    benchmark_row,
    check_leaf_settings,
    family_archs,
    load_tool,
    merged_into,
    own_settings,
    pretrained_checkpoint,
    run_tool,
    smallest_archs,
    tiny_config,
)

CONFIGS = REPO_ROOT / 'configs'
DETECTORS = ('retinanet', 'mask_rcnn')
LEAVES = [(det, f, a) for det in DETECTORS for f, _, a in family_archs()]
LEAF_IDS = [f'{d}-{f}-{a}' for d, f, a in LEAVES]
# The smallest arch of each family gets real forwards.
SMALL = {(f, a) for f, _, a in smallest_archs()}
LR = dict(retinanet=1e-4, mask_rcnn=2e-4)


def leaf_path(det, family, arch):
    return CONFIGS / f'{det}_{family}_{arch.replace("/", "_")}_coco.py'


@functools.cache
def _load(path):
    return Config.fromfile(path)


def load_leaf(det, family, arch):
    """A fresh copy of a leaf config (each file is parsed once: ~1-2 s)."""
    return copy.deepcopy(_load(leaf_path(det, family, arch)))


def load_base(det):
    """The parsed base of every ``det`` leaf (do not modify)."""
    return _load(CONFIGS / '_base_' / f'{det}_coco.py')


def test_every_arch_has_both_leaves():
    expected = {leaf_path(*leaf).name for leaf in LEAVES}
    found = {
        p.name for det in DETECTORS for p in CONFIGS.glob(f'{det}_*_coco.py')
    }
    assert len(expected) == 62
    assert found == expected


def check_pipeline(pipeline):
    resize = [t for t in pipeline if t['type'] == 'Resize']
    assert len(resize) == 1
    assert tuple(resize[0]['scale']) == (1333, 800)
    assert resize[0]['keep_ratio'] is True


@pytest.mark.parametrize('det', DETECTORS)
def test_base_recipe(det):
    cfg = load_base(det)
    assert cfg.default_scope == 'mmdet'
    # Optimiser: AdamW, the paper's lr, wd 1e-4, no decay on 1-D params.
    optim = cfg.optim_wrapper
    assert optim.optimizer == dict(type='AdamW', lr=LR[det], weight_decay=1e-4)
    assert optim.paramwise_cfg == dict(flat_decay_mult=0.0)
    # 1x schedule, 500-iteration warmup from 0.001.
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop'
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert (
        warmup.type,
        warmup.start_factor,
        warmup.by_epoch,
        warmup.begin,
        warmup.end,
    ) == ('LinearLR', 0.001, False, 0, 500)
    assert (steps.type, steps.milestones, steps.gamma, steps.by_epoch) == (
        'MultiStepLR',
        [8, 11],
        0.1,
        True,
    )
    # Batch 8 x 2 = 16.
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    # 1333x800 keep-ratio resize + flip 0.5 only.
    train_pipeline = cfg.train_dataloader.dataset.pipeline
    check_pipeline(train_pipeline)
    check_pipeline(cfg.test_dataloader.dataset.pipeline)
    assert [t['type'] for t in train_pipeline] == [
        'LoadImageFromFile',
        'LoadAnnotations',
        'Resize',
        'RandomFlip',
        'PackDetInputs',
    ]
    assert train_pipeline[3]['prob'] == 0.5
    assert train_pipeline[1].get('with_mask', False) is (det == 'mask_rcnn')
    # The backbone is the leaf's: nothing of ResNet's is left.
    backbone = cfg.model.backbone
    assert backbone.type is None and 'depth' not in backbone
    neck = cfg.model.neck
    assert neck.type == 'FPN' and neck.out_channels == 256
    assert neck.num_outs == 5
    assert neck.in_channels is None  # every leaf sets it
    if det == 'retinanet':
        # = published start_level=1 over 4 outputs; see the base config.
        assert backbone.out_indices == (1, 2, 3)
        assert neck.start_level == 0 and neck.add_extra_convs == 'on_input'
        assert cfg.model.bbox_head.type == 'RetinaHead'
    else:
        assert 'out_indices' not in backbone  # all four
        assert neck.get('start_level', 0) == 0
        assert cfg.model.roi_head.mask_head.type == 'FCNMaskHead'


@pytest.mark.parametrize('det', DETECTORS)
def test_a_leaf_is_its_base_plus_what_it_sets(det):
    """Parsed in full by mmengine, a leaf equals its base with the leaf's
    own settings merged in: what ``test_leaf_settings`` checks for every
    leaf is all that differs from the base."""
    own = own_settings(leaf_path(det, 'poolformer', 's12'))
    assert load_leaf(det, 'poolformer', 's12').to_dict() == merged_into(
        load_base(det).to_dict(), own
    )


@pytest.mark.parametrize('det,family,arch', LEAVES, ids=LEAF_IDS)
def test_leaf_settings(det, family, arch):
    backbone, model = check_leaf_settings(
        leaf_path(det, family, arch),
        f'./_base_/{det}_coco.py',
        family,
        arch,
        base_backbone=load_base(det).model.backbone.to_dict(),
    )
    if family == 'poolformer' and arch in ('s12', 's24', 's36'):
        # The published network: GN(1) on each output, stage dims 64..512.
        assert list(model.out_channels) == (
            [64, 128, 320, 512][1:]
            if det == 'retinanet'
            else [64, 128, 320, 512]
        )
        norms = list(model.out_norms.values())
        assert all(
            isinstance(n, torch.nn.GroupNorm) and n.num_groups == 1
            for n in norms
        )
        assert backbone.get('drop_path_rate', 0.0) == 0.0


def one_image_batch(model, size=64, with_mask=False):
    """One ``size`` x ``size`` image with one gt box (and mask)."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

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
    gt.bboxes = torch.tensor([[8.0, 10.0, 40.0, 50.0]])
    gt.labels = torch.tensor([3])
    if with_mask:
        mask = torch.zeros(1, size, size, dtype=torch.uint8)
        mask[0, 10:50, 8:40] = 1
        gt.masks = BitmapMasks(mask.numpy(), size, size)
    sample.gt_instances = gt
    torch.manual_seed(0)
    return torch.rand(1, 3, size, size), [sample]


def build_detector(cfg):
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


# RetinaNet for every family's smallest arch; Mask R-CNN (same backbones,
# heavier heads) for one pooling and one attention model.
SMALL_LEAVES = [
    leaf
    for leaf in LEAVES
    if leaf[1:] in SMALL
    and (
        leaf[0] == 'retinanet'
        or leaf[1:] in {('poolformer', 's12'), ('caformer', 's18')}
    )
]


@pytest.mark.parametrize(
    'det,family,arch',
    SMALL_LEAVES,
    ids=[f'{d}-{f}-{a}' for d, f, a in SMALL_LEAVES],
)
def test_leaf_builds_and_runs(det, family, arch):
    """Full detector, loss + backward + predict, for each family's smallest
    arch. The bigger archs' detectors differ only in the backbone arch and
    the neck's in_channels, which ``test_leaf_recipe`` checks by building
    their backbones on the meta device (a full build of all 62 detectors,
    meta or not, costs minutes on 2 cores and tests nothing more)."""
    cfg = load_leaf(det, family, arch)
    model = build_detector(cfg)
    inputs, samples = one_image_batch(model, with_mask=det == 'mask_rcnn')
    model.train()
    losses = model(inputs, samples, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(inputs, samples, mode='predict')
    pred = results[0].pred_instances
    assert pred.bboxes.shape[-1] == 4
    if det == 'mask_rcnn':
        assert 'masks' in pred


def test_retinanet_three_outputs_equal_published_layout():
    """Stages 1..3 + FPN(start_level=0) == stages 0..3 + FPN(start_level=1).

    Same parameter names, so the published state dict loads into ours with
    only the unused output-0 norm left over; features and head outputs then
    match exactly.
    """
    cfg = load_leaf('retinanet', 'poolformer', 's12')
    ours = build_detector(cfg.copy()).eval()
    published_cfg = cfg.copy()
    published_cfg.model.backbone.out_indices = (0, 1, 2, 3)
    published_cfg.model.neck.in_channels = [64, 128, 320, 512]
    published_cfg.model.neck.start_level = 1
    torch.manual_seed(1)
    published = build_detector(published_cfg)
    published.init_weights()
    with torch.no_grad():  # make the output norms non-trivial
        for p in published.backbone.out_norms.parameters():
            p.uniform_(0.5, 1.5)
    published.eval()
    state = published.state_dict()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert missing == []
    assert sorted(unexpected) == [
        'backbone.out_norms.0.bias',
        'backbone.out_norms.0.weight',
    ]
    inputs = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        feats_ours = ours.extract_feat(inputs)
        feats_pub = published.extract_feat(inputs)
        assert len(feats_ours) == len(feats_pub) == 5
        for a, b in zip(feats_ours, feats_pub):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(
            ours.bbox_head(feats_ours), published.bbox_head(feats_pub)
        ):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
    # Every parameter of ours gets a gradient (nothing unused under DDP).
    ours.train()
    inputs, samples = one_image_batch(ours)
    total, _ = ours.parse_losses(ours(inputs, samples, mode='loss'))
    total.backward()
    no_grad = [
        n
        for n, p in ours.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert no_grad == []


def test_toy_and_example_configs_load():
    for name in ('retinanet', 'mask_rcnn'):
        cfg = Config.fromfile(
            CONFIGS / 'toy' / f'{name}_poolformer_s12_toy_coco.py'
        )
        assert cfg.model.backbone.init_cfg is None
        assert cfg.train_dataloader.dataset.data_root == 'data/toy_coco/'
        assert cfg.val_evaluator.ann_file == (
            'data/toy_coco/annotations/instances_val2017.json'
        )
        # The recipe's structure is kept; only data, schedule, lr differ.
        assert cfg.model.neck.in_channels == (
            [128, 320, 512] if name == 'retinanet' else [64, 128, 320, 512]
        )
    path = CONFIGS / 'examples' / 'faster_rcnn_poolformer_s12_drop_in.py'
    example = Config.fromfile(path)
    assert example.model.backbone == dict(
        type='PoolFormer',
        arch='s12',
        init_cfg=dict(
            type='Pretrained',
            checkpoint=pretrained_checkpoint(path, 'poolformer', 's12'),
        ),
    )
    assert example.model.type == 'FasterRCNN'


def test_drop_in_example_in_fresh_process():
    """custom_imports alone registers the backbone (no explicit import)."""
    code = """
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmdet.registry import MODELS
cfg = Config.fromfile("configs/examples/faster_rcnn_poolformer_s12_drop_in.py")
cfg.model.backbone.init_cfg = None
init_default_scope("mmdet")
model = MODELS.build(cfg.model).eval()
with torch.no_grad():
    feats = model.extract_feat(torch.rand(1, 3, 64, 64))
print("FEATS", [tuple(f.shape) for f in feats])
"""
    proc = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        'FEATS [(1, 256, 16, 16), (1, 256, 8, 8), (1, 256, 4, 4), '
        '(1, 256, 2, 2), (1, 256, 1, 1)]' in proc.stdout
    )


# ---------------------------------------------------------------------------
# End to end through the tools, on a tiny toy COCO
# ---------------------------------------------------------------------------
TOY = {
    det: CONFIGS / 'toy' / f'{det}_poolformer_s12_toy_coco.py'
    for det in DETECTORS
}
# 8 images at 128 px, batch 4: 2 iterations per epoch.
SMALL_RUN = [
    'train_dataloader.batch_size=4',
    'train_dataloader.dataset.pipeline.2.scale=(128,128)',
    'val_dataloader.dataset.pipeline.1.scale=(128,128)',
    'test_dataloader.dataset.pipeline.1.scale=(128,128)',
    'default_hooks.checkpoint.interval=1',
    'default_hooks.logger.interval=1',
]


@pytest.fixture(scope='module')
def toy_cwd(tmp_path_factory):
    """A directory whose data/toy_coco is a tiny toy COCO."""
    from mmmetaformer_tools.toy import make_coco

    cwd = tmp_path_factory.mktemp('toy')
    make_coco(
        cwd / 'data' / 'toy_coco',
        num_train=8,
        num_val=4,
        img_size=128,
        seed=0,
        max_objects=3,
    )
    return cwd


@pytest.fixture(scope='module')
def tiny(toy_cwd):
    """``{det: tiny config}`` for the runs through the tools."""
    return {det: tiny_config(toy_cwd, det) for det in DETECTORS}


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def retinanet_run(toy_cwd, tiny):
    """Train 1 epoch, then resume to 2 epochs; return the work dir."""
    work = toy_cwd / 'work_retinanet'
    ok(
        run_tool(
            'train.py',
            tiny['retinanet'],
            '--work-dir',
            work,
            '--cfg-options',
            'train_cfg.max_epochs=1',
            *SMALL_RUN,
            cwd=toy_cwd,
        )
    )
    return work


def test_retinanet_train_checkpoint_and_resume(retinanet_run, toy_cwd, tiny):
    work = retinanet_run
    first = work / 'epoch_1.pth'
    assert first.is_file()
    assert Path(work / 'last_checkpoint').read_text().strip() == str(first)
    meta = torch.load(first, map_location='cpu', weights_only=False)['meta']
    assert (meta['epoch'], meta['iter']) == (1, 2)
    out = ok(
        run_tool(
            'train.py',
            tiny['retinanet'],
            '--work-dir',
            work,
            '--resume',
            first,
            '--cfg-options',
            'train_cfg.max_epochs=2',
            *SMALL_RUN,
            cwd=toy_cwd,
        )
    )
    assert 'resumed epoch: 1, iter: 2' in out
    assert re.search(r'Epoch\(train\)\s+\[2\]\[1/2\]', out)
    assert not re.search(r'Epoch\(train\)\s+\[1\]\[', out)
    second = work / 'epoch_2.pth'
    meta = torch.load(second, map_location='cpu', weights_only=False)['meta']
    assert (meta['epoch'], meta['iter']) == (2, 4)
    assert Path(work / 'last_checkpoint').read_text().strip() == str(second)


def test_retinanet_test_gives_coco_metric(retinanet_run, toy_cwd, tiny):
    # One epoch from scratch scores every box near the focal-loss prior
    # (0.01), under the recipe's 0.05 threshold; keep all boxes so the
    # metric has predictions to score.
    out = ok(
        run_tool(
            'test.py',
            tiny['retinanet'],
            retinanet_run / 'epoch_1.pth',
            '--work-dir',
            toy_cwd / 'work_test',
            '--cfg-options',
            *SMALL_RUN,
            'model.test_cfg.score_thr=0.0',
            cwd=toy_cwd,
        )
    )
    assert re.search(r'coco/bbox_mAP: -?\d\.\d+', out)
    assert 'coco/bbox_mAP_50' in out


def test_infer_draws_detections(retinanet_run, toy_cwd, tiny):
    image = sorted((toy_cwd / 'data' / 'toy_coco' / 'val2017').glob('*.jpg'))
    out_file = toy_cwd / 'vis' / 'det.jpg'
    out = ok(
        run_tool(
            'infer.py',
            image[0],
            tiny['retinanet'],
            retinanet_run / 'epoch_1.pth',
            '--out',
            out_file,
            cwd=toy_cwd,
        )
    )
    assert 'wrote' in out
    import mmcv

    drawn = mmcv.imread(str(out_file))
    assert drawn.shape == (128, 128, 3)


def test_benchmark_detection_with_checkpoint(retinanet_run, toy_cwd, tiny):
    proc = run_tool(
        'analysis/benchmark.py',
        tiny['retinanet'],
        retinanet_run / 'epoch_1.pth',
        '--num-images',
        '3',
        '--warmup',
        '1',
        '--threads',
        '1',
        '--cfg-options',
        *SMALL_RUN[1:4],
        cwd=toy_cwd,
    )
    out = ok(proc)
    cells = benchmark_row(proc.stdout, tiny['retinanet'].name)
    assert cells[1:3] == ['cpu', '3']
    assert 'images from the test dataset' in out


def test_infer_clear_errors(tmp_path):
    from mmmetaformer_tools.launch import LaunchError

    infer = load_tool('infer.py')
    image = tmp_path / 'img.jpg'
    config = str(TOY['retinanet'])
    with pytest.raises(LaunchError, match='Image file not found: .*nope.jpg'):
        infer.main(['nope.jpg', config, 'x.pth', '--out', 'o.jpg'])
    image.write_bytes(b'')
    with pytest.raises(LaunchError, match='Config file not found'):
        infer.main([str(image), 'no_config.py', 'x.pth', '--out', 'o.jpg'])
    with pytest.raises(LaunchError, match='Checkpoint file not found: x.pth'):
        infer.main([str(image), config, 'x.pth', '--out', 'o.jpg'])


def test_mask_rcnn_train_and_test(toy_cwd, tiny):
    work = toy_cwd / 'work_mask_rcnn'
    # one iteration of 4 images, a test on 2 with 20 detections each: the
    # masks' path end to end, not a training run
    ok(
        run_tool(
            'train.py',
            tiny['mask_rcnn'],
            '--work-dir',
            work,
            '--cfg-options',
            'train_cfg.max_epochs=1',
            'train_cfg.val_begin=2',  # no validation: test.py below
            'train_dataloader.dataset.indices=4',
            *SMALL_RUN,
            # weights only: the checkpoint feeds test.py, nothing resumes
            'default_hooks.checkpoint.save_optimizer=False',
            cwd=toy_cwd,
        )
    )
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    out = ok(
        run_tool(
            'test.py',
            tiny['mask_rcnn'],
            ckpt,
            '--work-dir',
            work,
            '--cfg-options',
            *SMALL_RUN,
            'test_dataloader.dataset.indices=2',
            'model.test_cfg.rcnn.score_thr=0.0',
            'model.test_cfg.rcnn.max_per_img=20',
            cwd=toy_cwd,
        )
    )
    assert re.search(r'coco/bbox_mAP: -?\d\.\d+', out)
    assert re.search(r'coco/segm_mAP: -?\d\.\d+', out)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_gloo_ranks(toy_cwd, tiny):
    work = toy_cwd / 'work_dist'
    env = dict(os.environ, PORT=str(free_port()), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [
            'bash',
            str(REPO_ROOT / 'tools' / 'dist_train.sh'),
            str(tiny['retinanet']),
            '2',
            '--work-dir',
            str(work),
            '--cfg-options',
            'train_cfg.max_epochs=1',
            'train_cfg.val_interval=2',
            *SMALL_RUN[1:],
            'train_dataloader.batch_size=2',
            'default_hooks.checkpoint.save_optimizer=False',  # not resumed
        ],
        cwd=toy_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = ok(proc)
    # 8 images / (2 ranks x 2) = 2 iterations; the world size is 2.
    assert re.search(r'Epoch\(train\)\s+\[1\]\[2/2\]', out)
    # mmengine's runtime summary ('GPU number' is its name for world size)
    assert 'Distributed training: True' in out
    assert re.search(r'GPU number: 2\b', out)
    assert (work / 'epoch_1.pth').is_file()


def test_missing_coco_root_names_it(tmp_path):
    proc = run_tool(
        'train.py',
        TOY['retinanet'],
        '--work-dir',
        tmp_path / 'w',
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data_root 'data/toy_coco/' does not exist" in proc.stderr
    assert 'tools/misc/make_toy_dataset.py coco data/toy_coco/' in proc.stderr
    assert 'Traceback' not in proc.stderr
