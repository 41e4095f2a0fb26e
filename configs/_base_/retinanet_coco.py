# RetinaNet on COCO: the PoolFormer paper's recipe (after PVT), shared by
# every ``configs/retinanet_<family>_<arch>_coco.py``. A leaf config fills in
# the backbone and the neck's ``in_channels``.
#
# What differs from mmdet's retinanet_r50_fpn_1x_coco (everything else is
# the installed base, unchanged):
#   - backbone: a MetaFormer with a GroupNorm(1) on each output (new layers),
#     ImageNet-1K weights via its init_cfg;
#   - AdamW lr 1e-4, weight decay 1e-4 instead of SGD lr 0.02, and no weight
#     decay on 1-D parameters (see metaformer_paramwise.py);
#   - the FPN reads the backbone's stages 1..3 only, see below.
#
# Unused-output decision. The published model has FPN(in_channels = 4 stage
# dims, start_level=1, add_extra_convs='on_input', num_outs=5): FPN with
# start_level=1 never reads input 0, so the backbone's output-0 norm is a
# parameter without gradient, which DDP rejects (unless
# find_unused_parameters=True, which costs a graph walk every iteration).
# Here the backbone emits only stages 1..3 (``out_indices=(1, 2, 3)``, no
# output-0 norm is built) and the FPN takes those 3 inputs from
# ``start_level=0``. That is the same network: the lateral convs, the
# top-down path and the 'on_input' extra convs (from the last input, stage
# 3) are identical, the parameter names are identical (``lateral_convs.0``
# is the stage-1 lateral in both; ``out_norms.<stage>`` is keyed by stage),
# so weights of the 4-output variant load here with only its unused output-0
# norm left over. The authors' published RetinaNet checkpoints use their own
# backbone key names (``network.{0..6}``, ``norm{2,4,6}``): they load after
# tools/convert_checkpoint.py renames those; they have no output-0 norm
# (trained with FORK_LAST3=1).
# tests/test_det_configs.py checks both variants give the same outputs.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
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
    # Stages 1..3 only (see the decision above).
    backbone=dict(_delete_=True, type=None, out_indices=(1, 2, 3)),
    neck=dict(
        in_channels=None,  # from the leaf: the backbone's out_channels
        start_level=0,  # = the published start_level=1 over 4 inputs
        add_extra_convs='on_input',  # as the base and the paper
        num_outs=5,
    ),
)  # P3..P7, as the base and the paper

# Data: the base pipeline is the paper's: Resize(1333, 800, keep_ratio) and
# RandomFlip(0.5), nothing else. Batch 2 per GPU x 8 GPUs = 16, as the base.
train_dataloader = dict(batch_size=2)

# 1x schedule as the base: 12 epochs, lr x0.1 at epochs 8 and 11, linear
# warmup over 500 iterations from 0.001 x lr.
train_cfg = dict(max_epochs=12)

# AdamW as in the paper (the base has SGD 0.02).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=_base_.metaformer_paramwise_cfg,
)

# lr 1e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
