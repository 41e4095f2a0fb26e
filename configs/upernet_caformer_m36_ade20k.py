_base_ = ['./_base_/upernet_ade20k.py']

# CAFormer-M36 UperNet 160k; no published ADE20K results.
# Size peer: ConvNeXt-S: 36 blocks, 56M params (S 50M, B 89M).
# ImageNet-21k pre-trained, fine-tuned on ImageNet-1k: the authors publish
# these for every ConvFormer/CAFormer size (sail-sg/metaformer README);
# the bigger ConvNeXts are benchmarked from IN-22k weights too.
# = pretrained_hub_id('caformer', 'm36', variant='in21ft1k').
checkpoint_file = 'hf-hub:timm/caformer_m36.sail_in22k_ft_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='m36',
        drop_path_rate=0.3,  # ConvNeXt-S's (mmseg convnext UperNet)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384),
)  # stage 3
# Stage-wise decay 0.9 (base) with ConvNeXt-S's num_layers.
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
