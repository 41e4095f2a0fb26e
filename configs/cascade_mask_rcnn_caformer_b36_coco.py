_base_ = ['./_base_/cascade_mask_rcnn_coco.py']

# CAFormer-B36 Cascade Mask R-CNN 3x; no published COCO results.
# Size peer: ConvNeXt-B: 36 blocks, 99M vs 89M params.
# ImageNet-21k pre-trained, fine-tuned on ImageNet-1k: the authors publish
# these for every ConvFormer/CAFormer size (sail-sg/metaformer README);
# the bigger ConvNeXts are benchmarked from IN-22k weights too.
# = pretrained_hub_id('caformer', 'b36', variant='in21ft1k').
checkpoint_file = 'hf-hub:timm/caformer_b36.sail_in22k_ft_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='b36',
        drop_path_rate=0.6,  # ConvNeXt-B IN-22k's
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 256, 512, 768]),
)
# Layer decay: ConvNeXt-B IN-22k's layer-wise 0.8 over its 12 layer
# groups puts the stem at 0.8**13 x lr (facebookresearch/ConvNeXt cascade
# B in22k). Here every block is a layer (36), so 0.8**(13/37) per layer
# spans the same range.
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),  # its lr with IN-22k weights (T/S: 2e-4)
    paramwise_cfg=dict(decay_rate=0.8 ** (13 / 37), num_layers=36),
)
