# Mask2Former on ADE20K semantic segmentation, 160k iterations: mmseg's own
# recipe (mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py)
# with a MetaFormer backbone. Shared by every
# ``configs/mask2former_<family>_<arch>_ade20k.py``; a leaf fills in the
# backbone (with its drop path), the pixel decoder's ``in_channels`` and
# the layer decay's ``num_layers``. No trained numbers exist for these
# configs.
#
# Inherited unchanged from the mmseg config:
#   - Mask2FormerHead: MSDeformAttn pixel decoder (6 encoder layers on the
#     stride 8/16/32 levels, FPN-style fusion down to stride 4, 256
#     channels), 9 masked-attention decoder layers, 100 queries, 150
#     classes; cross-entropy (weight 2, no-object 0.1), mask BCE and dice
#     (weight 5 each) on 12544 sampled points; Hungarian matching;
#   - data: random shorter side 256..1024 (max 2048), 512x512 crops
#     (cat_max_ratio 0.75), flip, photometric distortion; batch 2 per GPU x
#     8 GPUs = 16; whole-image test at shorter side 512;
#   - AdamW lr 1e-4, weight decay 0.05, eps 1e-8, gradient clipping at norm
#     0.01; poly decay (power 0.9) over 160k iterations, no warmup;
#     validation and a checkpoint every 5k iterations (the best mIoU kept).
_base_ = [
    'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    './metaformer_runtime.py',
]

# mmmetaformer's import and hooks (see metaformer_runtime.py). The import
# replaces the base's mmdet.models (the head's losses and matcher):
# mmseg's Mask2FormerHead imports them itself, and the 'mmdet.' scoped
# names import mmdet's registries on first use. Atomic checkpoints with
# the recipe's interval, exact resume. A non-finite loss (possible with
# --amp) skips the step, up to 10 in a row, then stops.
custom_imports = _base_.metaformer_custom_imports
default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
custom_hooks = _base_.metaformer_custom_hooks_skip_nonfinite

model = dict(
    # Placeholder, filled by each leaf: type, arch, drop_path_rate,
    # init_cfg. Building the base alone fails on purpose. All four stages
    # (strides 4..32) are emitted, as the recipe's ResNet, each with the
    # project's GroupNorm(1) output norm (new layers, top lr): the pixel
    # decoder reads stride 4 in its fusion and 8..32 in its encoder.
    backbone=dict(_delete_=True, type=None),
    decode_head=dict(in_channels=None),
)  # the leaf's four stage dims

# Stage-wise lr decay 0.9 with MetaFormerLayerDecayConstructor instead of
# the recipe's flat lr_mult=0.1 on the backbone, as the UperNet 160k leaves
# (configs/_base_/upernet_ade20k.py, mmseg's ConvNeXt recipe): the stem is
# layer 0, stage i layer i + 1, the pixel decoder and the transformer
# decoder layer num_layers + 1 (the leaf sets num_layers: 6 for S18, 12 for
# the 36-block sizes, as ConvNeXt-T / -S,B).
# Weight decay 0.05 as the recipe, none on 1-D parameters (norms, scales,
# biases, as the recipe's norm_decay_mult=0 and
# configs/_base_/metaformer_paramwise.py). The constructor has one rule
# for all: the 2-D query and level embeddings (query_embed, query_feat,
# level_embed), which the recipe exempts, decay here.
# fp32 as the recipe; add --amp to tools/train.py on GPUs.
optim_wrapper = dict(
    constructor='MetaFormerLayerDecayConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=0.9, decay_type='stage_wise'),
)

# lr 1e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
