_base_ = ['./_base_/mask_rcnn_coco.py']

# CAFormer-S18, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/caformer_s18.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s18',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
