_base_ = ['./_base_/retinanet_coco.py']

# The published PoolFormer-S36 RetinaNet (39.5 box AP).
checkpoint_file = 'hf-hub:timm/poolformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s36',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 1..3 (see _base_)
