_base_ = ['./_base_/semantic_fpn_ade20k.py']

# The published PoolFormer-M36 Semantic FPN model (42.4 mIoU).
checkpoint_file = 'hf-hub:timm/poolformer_m36.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='m36',
        drop_path_rate=0.0,  # as published (sail-sg and mmseg configs)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
