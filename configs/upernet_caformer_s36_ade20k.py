_base_ = ['./_base_/upernet_ade20k.py']

# CAFormer-S36 UperNet 160k; no published ADE20K results.
# Size peer: ConvNeXt-S: 36 blocks as its 3-3-27-3, 39M vs 50M params.
# ImageNet-1k weights, as the ConvNeXt-T/S recipes.
checkpoint_file = 'hf-hub:timm/caformer_s36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='s36',
        drop_path_rate=0.3,  # ConvNeXt-S's (mmseg convnext UperNet)
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320),
)  # stage 3
# Stage-wise decay 0.9 (base) with ConvNeXt-S's num_layers.
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
