_base_ = ['./_base_/dino_4scale_coco.py']

# CAFormer-S18 DINO 4-scale 12e; no published COCO results.
# Size peer: ConvNeXt-T: the same depths (3-3-9-3), 26M vs 28M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s18.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s18',
        drop_path_rate=0.4,  # ConvNeXt-T's (as the Cascade leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 2..4 (see _base_)
# Layer-wise decay as the Cascade Mask R-CNN leaf: ConvNeXt-T's 0.7 over its 6
# layer groups puts the stem at 0.7**7 x lr; 0.7**(7/19) per block spans the
# same range over 18 blocks.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (7 / 19), num_layers=18)
)
