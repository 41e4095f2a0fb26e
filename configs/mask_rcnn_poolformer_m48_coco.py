_base_ = ['./_base_/mask_rcnn_coco.py']

# PoolFormer-M48, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/poolformer_m48.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormer',
        arch='m48',
        drop_path_rate=0.0,  # as published
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
