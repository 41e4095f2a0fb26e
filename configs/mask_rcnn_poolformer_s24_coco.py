_base_ = ['./_base_/mask_rcnn_coco.py']

# The published PoolFormer-S24 Mask R-CNN (40.1 box AP, 37.0 mask AP).
checkpoint_file = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s24',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 320, 512]))
