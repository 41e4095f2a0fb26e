_base_ = ['./_base_/retinanet_coco.py']

# PoolFormer-M36, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/poolformer_m36.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='m36',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[192, 384, 768]),
)  # stages 1..3 (see _base_)
