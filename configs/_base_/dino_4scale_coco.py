# DINO 4-scale on COCO, 12 epochs: mmdet's own recipe
# (mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py) with a MetaFormer
# backbone. Shared by every ``configs/dino_4scale_<family>_<arch>_coco.py``;
# a leaf fills in the backbone (with its drop path), the neck's
# ``in_channels`` and the layer decay. No trained numbers exist for these
# configs.
#
# Inherited unchanged from the mmdet config:
#   - ChannelMapper (1x1 conv + GN to 256 channels on each input, and one
#     extra 3x3 stride-2 conv + GN on the last input: num_outs=4, strides
#     8..64); deformable encoder and decoder, 6 layers each, 4 levels, FFN
#     2048; 900 queries, two-stage with box refinement; contrastive
#     denoising (100 dn queries); focal / L1 / GIoU losses and the
#     Hungarian matcher; 300 detections per image;
#   - DETR's multi-scale augmentation (flip, then a shorter side in
#     480..800 or resize 400/500/600 + crop 384..600 + the same resize);
#     batch 2 per GPU x 8 GPUs = 16; test at 1333x800;
#   - AdamW lr 1e-4, weight decay 1e-4, gradient clipping at norm 0.1;
#     12 epochs, lr x0.1 at epoch 11 (no warmup).
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    './metaformer_runtime.py',
]

# mmmetaformer's import and hooks (see metaformer_runtime.py): atomic
# checkpoints with the recipe's interval, exact resume. A non-finite loss
# (possible with --amp) skips the step, up to 10 in a row, then stops.
custom_imports = _base_.metaformer_custom_imports
default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
custom_hooks = _base_.metaformer_custom_hooks_skip_nonfinite

model = dict(
    # Placeholder, filled by each leaf: type, arch, drop_path_rate,
    # init_cfg. Building the base alone fails on purpose.
    # DINO reads stages 2..4 (strides 8, 16, 32), as the recipe's ResNet
    # (out_indices=(1, 2, 3)); ChannelMapper adds the stride-64 level.
    # Stage 1 still runs but emits nothing, so it has no output norm (an
    # unused one would have no gradient, which DDP rejects). Each emitted
    # stage gets the project's GroupNorm(1) output norm (new layers, top
    # lr): the MetaFormer blocks end in an unnormalised residual stream.
    backbone=dict(_delete_=True, type=None, out_indices=(1, 2, 3)),
    neck=dict(in_channels=None),
)  # the leaf's stage 2..4 dims

# Layer-wise lr decay with MetaFormerLayerDecayConstructor instead of the
# recipe's flat lr_mult=0.1 on the whole backbone: the stem is layer 0,
# every block one layer (downsampling with the block after it), the neck,
# the transformer and the head layer num_layers + 1. The leaf sets
# decay_rate and num_layers as the Cascade Mask R-CNN leaves do (the
# ConvNeXt peer's layer decay on COCO), so the stem trains at ~0.08x
# (S18..M36) / ~0.05x (B36) lr, near the recipe's 0.1x, and the last blocks
# near 1x, as ConvNeXt detectors fine-tune.
# Weight decay: the recipe's 1e-4, but none on 1-D parameters (norms,
# scales, biases), as configs/_base_/metaformer_paramwise.py; the recipe
# decays everything. Gradient clipping (0.1) is kept.
# fp32 as the recipe; add --amp to tools/train.py on GPUs.
optim_wrapper = dict(
    constructor='MetaFormerLayerDecayConstructor',
    paramwise_cfg=dict(_delete_=True, decay_type='layer_wise'),
)

# lr 1e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
