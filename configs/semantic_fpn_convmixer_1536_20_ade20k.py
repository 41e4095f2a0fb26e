_base_ = ['./_base_/semantic_fpn_ade20k.py']

# ConvMixer-1536/20 with its stride-4..32 adapter; no published dense results.
checkpoint_file = 'hf-hub:timm/convmixer_1536_20.in1k'
model = dict(
    backbone=dict(
        type='ConvMixer',
        arch='1536/20',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[384, 768, 1536, 1536]),
)
