# Mask R-CNN on COCO: the PoolFormer paper's recipe (after PVT), shared by
# every ``configs/mask_rcnn_<family>_<arch>_coco.py``. A leaf config fills in
# the backbone and the neck's ``in_channels``.
#
# What differs from mmdet's mask-rcnn_r50_fpn_1x_coco (everything else is the
# installed base, unchanged: FPN 256 channels from all 4 stages, num_outs=5,
# standard RPN / RoI heads):
#   - backbone: a MetaFormer with a GroupNorm(1) on each of its 4 outputs
#     (new layers), ImageNet-1K weights via its init_cfg;
#   - AdamW lr 2e-4, weight decay 1e-4 instead of SGD lr 0.02, and no weight
#     decay on 1-D parameters (see metaformer_paramwise.py).
# Every backbone output feeds the FPN, so DDP sees no unused parameter.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './metaformer_paramwise.py',
    './metaformer_runtime.py',
]

# mmmetaformer's import and hooks (see metaformer_runtime.py): atomic
# checkpoints, exact resume, and a stop at the first non-finite loss
# (the recipe trains in fp32).
custom_imports = _base_.metaformer_custom_imports
default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
custom_hooks = _base_.metaformer_custom_hooks

model = dict(
    # Placeholder, filled by each leaf: type, arch, init_cfg and the
    # backbone's own options. Building the base alone fails on purpose.
    backbone=dict(_delete_=True, type=None),
    neck=dict(in_channels=None),
)  # from the leaf: the backbone's out_channels

# Data: the base pipeline is the paper's: Resize(1333, 800, keep_ratio) and
# RandomFlip(0.5), nothing else. Batch 2 per GPU x 8 GPUs = 16, as the base.
train_dataloader = dict(batch_size=2)

# 1x schedule as the base: 12 epochs, lr x0.1 at epochs 8 and 11, linear
# warmup over 500 iterations from 0.001 x lr.
train_cfg = dict(max_epochs=12)

# AdamW as in the paper (the base has SGD 0.02).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=_base_.metaformer_paramwise_cfg,
)

# lr 2e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
