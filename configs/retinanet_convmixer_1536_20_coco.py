_base_ = ['./_base_/retinanet_coco.py']

# ConvMixer-1536/20 with its stride-4..32 adapter; no published dense results.
checkpoint_file = 'https://github.com/tmp-iclr/convmixer/releases/download/timm-v1.0/convmixer_1536_20_ks9_p7.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        type='ConvMixer',
        arch='1536/20',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[768, 1536, 1536]))  # stages 1..3 (see _base_)
