_base_ = ['./_base_/mask2former_coco.py']

# ConvFormer-M36 Mask2Former COCO instance 50e; no published COCO
# results.
# Size peer: ConvNeXt-S: 36 blocks, 57M params (S 50M, B 89M).
# ImageNet-21k pre-trained, fine-tuned on ImageNet-1k: the authors publish
# these for every ConvFormer/CAFormer size (sail-sg/metaformer README);
# the bigger ConvNeXts are benchmarked from IN-22k weights too.
# = pretrained_hub_id('convformer', 'm36', variant='in21ft1k').
checkpoint_file = 'hf-hub:timm/convformer_m36.sail_in22k_ft_in1k'
model = dict(
    backbone=dict(
        type='ConvFormer',
        arch='m36',
        drop_path_rate=0.3,  # ConvNeXt-S's (as the ADE20K leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    panoptic_head=dict(in_channels=[96, 192, 384, 576]),
)  # all four stages
# Stage-wise decay 0.9 (base) with ConvNeXt-S's num_layers (ADE20K leaf).
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
