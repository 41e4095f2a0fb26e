_base_ = ['./_base_/mask_rcnn_coco.py']

# The published PoolFormer-S24 Mask R-CNN (40.1 box AP, 37.0 mask AP).
checkpoint_file = 'hf-hub:timm/poolformer_s24.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s24',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
