_base_ = ['./_base_/retinanet_coco.py']

# ConvMixer-768/32 with its stride-4..32 adapter; no published dense results.
checkpoint_file = 'https://github.com/tmp-iclr/convmixer/releases/download/timm-v1.0/convmixer_768_32_ks7_p7_relu.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        type='ConvMixer',
        arch='768/32',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[384, 768, 768]))  # stages 1..3 (see _base_)
