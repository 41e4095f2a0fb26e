# Semantic FPN on ADE20K: the PoolFormer paper's recipe (after PVT), shared
# by every ``configs/semantic_fpn_<family>_<arch>_ade20k.py``. A leaf config
# fills in the backbone and the neck's ``in_channels``.
#
# Compared with the published PoolFormer models (sail-sg/poolformer
# segmentation configs, mmseg 0.x) and mmseg's port
# (mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py):
#   - Same network: backbone with a GroupNorm(1) on each of the 4 outputs,
#     FPN(stage dims -> 256, num_outs=4), FPNHead(128 channels, dropout 0.1,
#     150 classes, SyncBN), whole-image inference.
#   - Same data, schedule and optimiser: 40k iterations of 8 GPUs x 4
#     images, AdamW lr 2e-4 wd 1e-4, poly(0.9) to 0.
#   - No weight decay on 1-D parameters (norms, scales, biases). The
#     published runs decayed everything; at wd 1e-4 the difference is small.
#   - mmseg's port freezes the stem (mmpretrain ``frozen_stages=0``) and uses
#     AMP; the original trains every layer in fp32, as here (``--amp`` is
#     there if wanted). Its ``RepeatDataset(times=50)`` only changes epoch
#     boundaries, which an iteration-based schedule does not use.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
    './metaformer_paramwise.py',
    './metaformer_runtime.py',
]

# mmmetaformer's import and hooks (see metaformer_runtime.py): atomic
# checkpoints, exact resume, and a stop at the first non-finite loss
# (the recipe trains in fp32).
custom_imports = _base_.metaformer_custom_imports
default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
custom_hooks = _base_.metaformer_custom_hooks

# Norms in the head: fpn_r50's SyncBN is kept for the 8-GPU recipe. Where
# there is nothing to synchronise it is plain BN anyway: torch's
# SyncBatchNorm.forward falls back to F.batch_norm unless a process group
# with world size > 1 is initialised (single GPU, or CPU without
# --launcher). Only gloo on CPU would fail (SyncBN has no CPU kernel), so
# tools/train.py and tools/test.py replace SyncBN by BN when there is no GPU.

crop_size = (512, 512)
# Pads each training crop to 512x512 (ignore label 255) so a batch stacks;
# smaller images give crops smaller than 512.
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the backbone loads ImageNet weights via init_cfg
    # Placeholder, filled by each leaf: type, arch, init_cfg and the
    # backbone's own options. Building the base alone fails on purpose.
    backbone=dict(_delete_=True, type=None),
    # out_channels=256, num_outs=4 as fpn_r50; in_channels from the leaf
    # (the backbone's out_channels), not ResNet's.
    neck=dict(in_channels=None),
    # channels=128, dropout_ratio=0.1 as fpn_r50.
    decode_head=dict(num_classes=150),
)

# Training data: the ade20k base pipeline is the paper's (PVT's): random
# resize to scale (2048, 512) x ratio 0.5..2.0 (shorter side 256..1024),
# random 512x512 crop with cat_max_ratio 0.75, flip and photometric
# distortion. Batch 4 per GPU (x 8 GPUs = 32).
train_dataloader = dict(batch_size=4)

# Testing: Resize(scale=(2048, 512), keep_ratio) makes the shorter side 512
# (the longer one is capped at 2048). The published models then rounded both
# sides up to a multiple of 32 (PVT's AlignResize, mmseg's ResizeToMultiple);
# the label map stays at full resolution and predictions are resized back.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# AdamW, lr 2e-4 for batch 32, weight decay 1e-4 (see metaformer_paramwise).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=_base_.metaformer_paramwise_cfg,
)
# Poly decay with power 0.9 to 0 over the 40k iterations, no warmup.
param_scheduler = [
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=40000,
        by_epoch=False,
    )
]
# schedule_40k: IterBasedTrainLoop(max_iters=40000, val_interval=4000) and a
# checkpoint every 4000 iterations.
auto_scale_lr = dict(enable=False, base_batch_size=32)
