_base_ = ['./_base_/semantic_fpn_ade20k.py']

# IdentityFormer-S36: no published dense results; the PoolFormer recipe.
checkpoint_file = 'hf-hub:sail/dl/identityformer/identityformer_s36.pth'
model = dict(
    backbone=dict(
        type='IdentityFormer',
        arch='s36',
        drop_path_rate=0.1,  # none published; PVT's value for its dense models
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
