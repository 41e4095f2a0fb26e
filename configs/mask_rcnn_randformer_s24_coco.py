_base_ = ['./_base_/mask_rcnn_coco.py']

# RandFormer-S24, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:sail/dl/randformer/randformer_s24.pth'
model = dict(
    backbone=dict(
        type='RandFormer',
        arch='s24',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
