_base_ = ['./_base_/retinanet_coco.py']

# IdentityFormer-S36, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:sail/dl/identityformer/identityformer_s36.pth'
model = dict(
    backbone=dict(
        type='IdentityFormer',
        arch='s36',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)  # stages 1..3 (see _base_)
