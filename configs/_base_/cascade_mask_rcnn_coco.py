# Cascade Mask R-CNN on COCO, 3x schedule with multi-scale training:
# mmdet's ConvNeXt recipe, the setup that ConvNeXt, InternImage and the
# MetaFormer baselines' class of backbones are compared on. Shared by every
# ``configs/cascade_mask_rcnn_<family>_<arch>_coco.py``; a leaf fills in the
# backbone (with its drop path), the neck's ``in_channels`` and the layer
# decay. No trained numbers exist for these configs.
#
# Inherited unchanged from mmdet's ConvNeXt-T config
# (mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-
# ms-crop-3x_coco.py and its bases: cascade-mask-rcnn_r50_fpn,
# coco_instance, schedule_1x, default_runtime):
#   - FPN (256 channels, 5 levels) on all four stages; three cascade stages
#     with 4conv1fc box heads (SyncBN; the tools make it BN on CPU) and
#     GIoU loss (weight 10); the FCN mask head;
#   - multi-scale training (DETR's augmentation): flip, then either a
#     random shorter side in 480..800 (step 32, longer side <= 1333) or a
#     resize to 400/500/600, a random 384..600 crop and the same
#     480..800 resize; batch 2 per GPU x 8 GPUs = 16; test at 1333x800;
#   - 3x: 36 epochs, lr x0.1 at epochs 27 and 33, linear warmup over 1000
#     iterations from 0.001 x lr;
#   - AdamW lr 2e-4, betas (0.9, 0.999), weight decay 0.05.
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',  # noqa: E501
    './metaformer_runtime.py',
]

# mmmetaformer's import (in place of the base's mmpretrain, for its
# ConvNeXt) and hooks (see metaformer_runtime.py): atomic checkpoints with
# the recipe's interval, exact resume. The recipe trains with AMP: skip up
# to 10 consecutive steps with a non-finite loss, then stop.
custom_imports = _base_.metaformer_custom_imports
default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
custom_hooks = _base_.metaformer_custom_hooks_skip_nonfinite

model = dict(
    # Placeholder, filled by each leaf: type, arch, drop_path_rate,
    # init_cfg. Building the base alone fails on purpose. All four stages
    # are emitted with the project's GroupNorm(1) output norms (new layers,
    # top lr; ConvNeXt has a LayerNorm on each output in the same place).
    backbone=dict(_delete_=True, type=None),
    neck=dict(in_channels=None),
)  # the leaf's four stage dims

# Layer-wise lr decay with MetaFormerLayerDecayConstructor: the stem is
# layer 0, every block one layer (downsampling with the block after it),
# the neck and heads layer num_layers + 1. The leaf sets decay_rate and
# num_layers from the ConvNeXt of matching size (see each leaf). No weight
# decay on 1-D parameters, as configs/_base_/metaformer_paramwise.py.
# The recipe trains with AMP (AmpOptimWrapper); here fp32 so that it also
# runs on CPU: add --amp to tools/train.py on GPUs.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='MetaFormerLayerDecayConstructor',
    paramwise_cfg=dict(_delete_=True, decay_type='layer_wise'),
)

# lr 2e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
