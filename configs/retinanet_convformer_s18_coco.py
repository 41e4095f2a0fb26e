_base_ = ['./_base_/retinanet_coco.py']

# ConvFormer-S18, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:timm/convformer_s18.sail_in1k'
model = dict(
    backbone=dict(
        type='ConvFormer',
        arch='s18',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 1..3 (see _base_)
