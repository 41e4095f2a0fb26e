_base_ = ['./_base_/cascade_mask_rcnn_coco.py']

# CAFormer-S36 Cascade Mask R-CNN 3x; no published COCO results.
# Size peer: ConvNeXt-S: 36 blocks as its 3-3-27-3, 39M vs 50M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s36',
        drop_path_rate=0.6,  # ConvNeXt-S's
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
# Layer decay: ConvNeXt-S's layer-wise 0.7 over its 12 layer groups puts
# the stem at 0.7**13 x lr (mmdet::convnext cascade S). Here every block is a
# layer (36), so 0.7**(13/37) per layer spans the same range.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (13 / 37), num_layers=36)
)
