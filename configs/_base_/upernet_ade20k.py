# UperNet on ADE20K, 160k iterations: mmseg's ConvNeXt recipe, the setup
# that ConvNeXt, InternImage and the MetaFormer baselines' class of
# backbones are compared on. Shared by every
# ``configs/upernet_<family>_<arch>_ade20k.py``; a leaf fills in the
# backbone (with its drop path), the heads' ``in_channels`` and the layer
# decay's ``num_layers``. No trained numbers exist for these configs.
#
# Inherited unchanged from mmseg's ConvNeXt-T config
# (mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py and
# its bases: _base_/models/upernet_convnext.py, _base_/datasets/ade20k.py,
# _base_/schedules/schedule_160k.py, _base_/default_runtime.py):
#   - UPerHead (512 channels, pool scales 1/2/3/6, dropout 0.1) on all four
#     stages, and an auxiliary FCNHead (256 channels, loss weight 0.4) on
#     stage 3 (in_index=2); 150 classes; SyncBN in the heads (the tools
#     make it BN on CPU);
#   - data: random resize to (2048, 512) x 0.5..2.0, 512x512 crops
#     (cat_max_ratio 0.75), flip, photometric distortion; batch 2 per GPU x
#     8 GPUs = 16; test at shorter side 512, sliding 512x512 windows with
#     stride 341 (``test_cfg``);
#   - schedule: 160k iterations, linear warmup over 1500 iterations from
#     1e-6 x lr, then poly decay with power 1.0 to 0; validation and a
#     checkpoint every 16k iterations.
_base_ = [
    'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
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
    decode_head=dict(in_channels=None),  # the leaf's four stage dims
    auxiliary_head=dict(in_channels=None),
)  # the leaf's stage-3 dim

# AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, and stage-wise lr
# decay 0.9, as the ConvNeXt configs (mmseg's and facebookresearch/
# ConvNeXt's semantic_segmentation/configs/convnext/). ``num_layers`` comes
# from the leaf: ConvNeXt uses 6 for T (depths 3-3-9-3, the depths of S18)
# and 12 for S and B (36 blocks, as S36/M36/B36). With
# MetaFormerLayerDecayConstructor the stem is layer 0, stage i layer i + 1
# and the heads layer num_layers + 1, so the per-stage rates equal
# ConvNeXt's for the matching depth (its downsampling layers train at the
# stem's rate; here each goes with its stage). No weight decay on 1-D
# parameters, as configs/_base_/metaformer_paramwise.py.
# The recipe trains with AMP (AmpOptimWrapper); here fp32 so that it also
# runs on CPU: add --amp to tools/train.py on GPUs.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05
    ),
    constructor='MetaFormerLayerDecayConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'),
)

# lr 1e-4 is for 16 images per iteration; --auto-scale-lr rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
