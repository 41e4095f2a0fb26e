_base_ = ['./_base_/semantic_fpn_ade20k.py']

# The published PoolFormer-S36 Semantic FPN model (42.0 mIoU).
checkpoint_file = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s36',
        drop_path_rate=0.0,  # as published (sail-sg and mmseg configs)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 320, 512]))
