_base_ = ['./_base_/retinanet_coco.py']

# RandFormer-M36, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:sail/dl/randformer/randformer_m36.pth'
model = dict(
    backbone=dict(
        type='RandFormer',
        arch='m36',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[192, 384, 768]),
)  # stages 1..3 (see _base_)
