_base_ = ['./_base_/mask_rcnn_coco.py']

# PoolFormerV2-M48, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/poolformerv2_m48.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormerV2',
        arch='m48',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
