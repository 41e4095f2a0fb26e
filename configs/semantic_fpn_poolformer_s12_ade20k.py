_base_ = ['./_base_/semantic_fpn_ade20k.py']

# The published PoolFormer-S12 Semantic FPN model (37.2 mIoU).
checkpoint_file = 'hf-hub:timm/poolformer_s12.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='s12',
        drop_path_rate=0.0,  # as published (sail-sg and mmseg configs)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
