_base_ = ['./_base_/semantic_fpn_ade20k.py']

# IdentityFormer-M36: no published dense results; the PoolFormer recipe.
checkpoint_file = 'hf-hub:sail/dl/identityformer/identityformer_m36.pth'
model = dict(
    backbone=dict(
        type='IdentityFormer',
        arch='m36',
        drop_path_rate=0.1,  # none published; PVT's value for its dense models
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
