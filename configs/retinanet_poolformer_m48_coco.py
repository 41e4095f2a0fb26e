_base_ = ['./_base_/retinanet_coco.py']

# PoolFormer-M48, same recipe; no published COCO results.
checkpoint_file = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m48.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='m48',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[192, 384, 768]))  # stages 1..3 (see _base_)
