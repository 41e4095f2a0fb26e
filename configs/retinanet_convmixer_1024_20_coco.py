_base_ = ['./_base_/retinanet_coco.py']

# ConvMixer-1024/20 with its stride-4..32 adapter; no published dense results.
checkpoint_file = 'hf-hub:timm/convmixer_1024_20_ks9_p14.in1k'
model = dict(
    backbone=dict(
        type='ConvMixer',
        arch='1024/20',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[512, 1024, 1024]),
)  # stages 1..3 (see _base_)
