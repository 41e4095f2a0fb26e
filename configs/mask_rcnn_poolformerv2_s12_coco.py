_base_ = ['./_base_/mask_rcnn_coco.py']

# PoolFormerV2-S12, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/poolformerv2_s12.sail_in1k'
model = dict(
    backbone=dict(
        type='PoolFormerV2',
        arch='s12',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
