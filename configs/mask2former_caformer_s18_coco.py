_base_ = ['./_base_/mask2former_coco.py']

# CAFormer-S18 Mask2Former COCO instance 50e; no published COCO
# results.
# Size peer: ConvNeXt-T: the same depths (3-3-9-3), 26M vs 28M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s18.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s18',
        drop_path_rate=0.4,  # ConvNeXt-T's (as the ADE20K leaf)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    panoptic_head=dict(in_channels=[64, 128, 320, 512]),
)  # all four stages
# Stage-wise decay 0.9 (base) with ConvNeXt-T's num_layers (ADE20K leaf).
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6))
