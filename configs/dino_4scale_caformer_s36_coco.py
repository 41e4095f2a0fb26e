_base_ = ['./_base_/dino_4scale_coco.py']

# CAFormer-S36 DINO 4-scale 12e; no published COCO results.
# Size peer: ConvNeXt-S: 36 blocks as its 3-3-27-3, 39M vs 50M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s36',
        drop_path_rate=0.6,  # ConvNeXt-S's (as the Cascade leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 2..4 (see _base_)
# Layer-wise decay as the Cascade Mask R-CNN leaf: ConvNeXt-S's 0.7 over its 12
# layer groups puts the stem at 0.7**13 x lr; 0.7**(13/37) per block spans the
# same range over 36 blocks.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (13 / 37), num_layers=36)
)
