_base_ = ['./_base_/cascade_mask_rcnn_coco.py']

# CAFormer-M36 Cascade Mask R-CNN 3x; no published COCO results.
# Size peer: ConvNeXt-S: 36 blocks, 56M params (S 50M, B 89M).
# ImageNet-21k pre-trained, fine-tuned on ImageNet-1k: the authors publish
# these for every ConvFormer/CAFormer size (sail-sg/metaformer README);
# the bigger ConvNeXts are benchmarked from IN-22k weights too.
# = pretrained_hub_id('caformer', 'm36', variant='in21ft1k').
checkpoint_file = 'hf-hub:timm/caformer_m36.sail_in22k_ft_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='m36',
        drop_path_rate=0.6,  # ConvNeXt-S's
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 576]),
)
# Layer decay: ConvNeXt-S's layer-wise 0.7 over its 12 layer groups puts
# the stem at 0.7**13 x lr (mmdet::convnext cascade S). Here every block is a
# layer (36), so 0.7**(13/37) per layer spans the same range.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (13 / 37), num_layers=36)
)
