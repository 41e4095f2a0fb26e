# Drop-in use of a MetaFormer backbone in a stock mmdet config: take any
# mmdet model config, import mmmetaformer and swap the backbone. Here Faster
# R-CNN R-50-FPN 1x (SGD 0.02, as the stock config) with PoolFormer-S12 in
# place of ResNet-50; for the paper's recipe use the configs in configs/
# instead (retinanet_* / mask_rcnn_*).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

# Registers PoolFormer and friends in mmdet's MODELS registry.
custom_imports = dict(imports=['mmmetaformer'], allow_failed_imports=False)
# The stock CheckpointHook writes iter_N.pth in place (a kill or a full disk
# leaves it truncated); mmmetaformer's writes it whole or not at all.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

checkpoint_file = 'hf-hub:timm/poolformer_s12.sail_in1k'
model = dict(
    backbone=dict(
        _delete_=True,  # drop ResNet's depth, norm_cfg, style, ...
        type='PoolFormer',
        arch='s12',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    # PoolFormer-S12 stage dims, instead of ResNet-50's [256, ..., 2048].
    neck=dict(in_channels=[64, 128, 320, 512]),
)
