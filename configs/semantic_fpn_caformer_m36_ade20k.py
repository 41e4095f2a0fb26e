_base_ = ['./_base_/semantic_fpn_ade20k.py']

# CAFormer-M36: no published dense results; the PoolFormer recipe.
checkpoint_file = 'hf-hub:timm/caformer_m36.sail_in1k'
model = dict(
    backbone=dict(
        type='CAFormer',
        arch='m36',
        drop_path_rate=0.1,  # none published; PVT's value for its dense models
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    neck=dict(in_channels=[96, 192, 384, 576]),
)
