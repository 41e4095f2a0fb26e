_base_ = ['./_base_/retinanet_coco.py']

# CAFormer-M36, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/caformer_m36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='m36',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[192, 384, 576]),
)  # stages 1..3 (see _base_)
