_base_ = ['./_base_/dino_4scale_coco.py']

# ConvFormer-M36 DINO 4-scale 12e; no published COCO results.
# Size peer: ConvNeXt-S: 36 blocks, 57M params (S 50M, B 89M).
# ImageNet-21k pre-trained, fine-tuned on ImageNet-1k: the authors publish
# these for every ConvFormer/CAFormer size (sail-sg/metaformer README);
# the bigger ConvNeXts are benchmarked from IN-22k weights too.
# = pretrained_hub_id('convformer', 'm36', variant='in21ft1k').
checkpoint_file = 'hf-hub:timm/convformer_m36.sail_in22k_ft_in1k'
model = dict(
    backbone=dict(
        type='ConvFormer',
        arch='m36',
        drop_path_rate=0.6,  # ConvNeXt-S's (as the Cascade leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[192, 384, 576]),
)  # stages 2..4 (see _base_)
# Layer-wise decay as the Cascade Mask R-CNN leaf: ConvNeXt-S's 0.7 over its 12
# layer groups puts the stem at 0.7**13 x lr; 0.7**(13/37) per block spans the
# same range over 36 blocks.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (13 / 37), num_layers=36)
)
