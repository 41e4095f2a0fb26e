_base_ = ['./_base_/semantic_fpn_ade20k.py']

# The published PoolFormer-S24 Semantic FPN model (40.3 mIoU).
checkpoint_file = 'hf-hub:timm/poolformer_s24.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s24',
        drop_path_rate=0.0,  # as published (sail-sg and mmseg configs)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
