_base_ = ['./_base_/mask_rcnn_coco.py']

# The published PoolFormer-S36 Mask R-CNN (41.0 box AP, 37.7 mask AP).
checkpoint_file = 'hf-hub:timm/poolformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s36',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
