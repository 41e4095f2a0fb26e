_base_ = ['./_base_/cascade_mask_rcnn_coco.py']

# CAFormer-S18 Cascade Mask R-CNN 3x; no published COCO results.
# Size peer: ConvNeXt-T: the same depths (3-3-9-3), 26M vs 28M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s18.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s18',
        drop_path_rate=0.4,  # ConvNeXt-T's
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
# Layer decay: ConvNeXt-T's layer-wise 0.7 over its 6 layer groups puts
# the stem at 0.7**7 x lr (mmdet::convnext cascade T). Here every block is a
# layer (18), so 0.7**(7/19) per layer spans the same range.
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=0.7 ** (7 / 19), num_layers=18)
)
