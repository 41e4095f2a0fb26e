_base_ = ['./_base_/mask_rcnn_coco.py']

# RandFormer-M48, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:sail/dl/randformer/randformer_m48.pth'
model = dict(
    backbone=dict(
        type='RandFormer',
        arch='m48',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
