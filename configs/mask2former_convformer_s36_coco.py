_base_ = ['./_base_/mask2former_coco.py']

# ConvFormer-S36 Mask2Former COCO instance 50e; no published COCO
# results.
# Size peer: ConvNeXt-S: 36 blocks as its 3-3-27-3, 40M vs 50M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/convformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='ConvFormer',
        arch='s36',
        drop_path_rate=0.3,  # ConvNeXt-S's (as the ADE20K leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    panoptic_head=dict(in_channels=[64, 128, 320, 512]),
)  # all four stages
# Stage-wise decay 0.9 (base) with ConvNeXt-S's num_layers (ADE20K leaf).
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
