_base_ = ['./_base_/retinanet_coco.py']

# ConvMixer-768/32 with its stride-4..32 adapter; no published dense results.
checkpoint_file = 'hf-hub:timm/convmixer_768_32.in1k'
model = dict(
    backbone=dict(
        type='ConvMixer',
        arch='768/32',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[384, 768, 768]),
)  # stages 1..3 (see _base_)
