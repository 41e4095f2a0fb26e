_base_ = ['./_base_/retinanet_coco.py']

# CAFormer-S36, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/caformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s36',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 1..3 (see _base_)
