_base_ = ['./_base_/retinanet_coco.py']

# IdentityFormer-M48, same recipe; no published COCO results.
checkpoint_file = 'hf-hub:sail/dl/identityformer/identityformer_m48.pth'
model = dict(
    backbone=dict(
        type='IdentityFormer',
        arch='m48',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[192, 384, 768]),
)  # stages 1..3 (see _base_)
