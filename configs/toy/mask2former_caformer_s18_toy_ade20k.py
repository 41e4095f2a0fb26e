# CAFormer-S18 Mask2Former (with stage-wise lr decay) on the synthetic toy
# ADE20K, from scratch on CPU. Same layering as
# semantic_fpn_poolformer_s12_toy_ade20k.py; works for any mask2former
# leaf.
_base_ = [
    '../mask2former_caformer_s18_ade20k.py',
    '../_base_/toy_ade20k.py',
]
# Mask2Former at toy size: the structure stays (MSDeformAttn pixel decoder
# over the four stages, 256 channels, masked-attention decoder, point-
# sampled mask losses, Hungarian matching); depths, FFN widths, queries,
# sampled points and classes shrink.
toy_num_classes = len(_base_.toy_classes)  # recipe: 150
model = dict(
    _base_.toy_model,  # 128x128 crops, backbone from scratch
    decode_head=dict(
        num_classes=toy_num_classes,
        num_queries=20,  # recipe: 100
        pixel_decoder=dict(
            encoder=dict(
                num_layers=2,  # recipe: 6
                layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256)),
            )
        ),  # recipe: 1024
        transformer_decoder=dict(
            num_layers=3,  # recipe: 9 (3 rounds over the 3 levels)
            layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512)),
        ),  # recipe: 2048
        # the no-object class keeps its 0.1 weight
        loss_cls=dict(class_weight=[1.0] * toy_num_classes + [0.1]),
        # 32x32 mask logits at stride 4 of a 128 px crop (recipe: 12544,
        # 112x112)
        train_cfg=dict(num_points=1024),
    ),
)
train_dataloader = _base_.toy_subset_train_dataloader
val_dataloader = _base_.toy_subset_val_dataloader
test_dataloader = _base_.toy_subset_val_dataloader
train_cfg = _base_.toy_train_cfg
# From scratch a larger lr than the recipe's 1e-4; its clipping and the
# layer decay stay.
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
