# ConvFormer-S18 DINO 4-scale (with layer-wise lr decay) on the synthetic
# toy COCO, from scratch on CPU. Same layering as
# retinanet_poolformer_s12_toy_coco.py; works for any dino_4scale leaf.
_base_ = [
    '../dino_4scale_convformer_s18_coco.py',
    '../_base_/toy_coco.py',
]
# DINO at toy size: the structure stays (ChannelMapper to 4 levels, 256
# channels, deformable encoder and decoder, two-stage query selection, box
# refinement, contrastive denoising, the losses and the matcher); the
# depths, FFN widths, query counts and classes shrink (a 128 px toy image
# holds at most a few objects).
toy_ffn = 512  # recipe: 2048
model = dict(
    _base_.toy_model,  # backbone from scratch
    num_queries=100,  # recipe: 900
    encoder=dict(
        num_layers=2,  # recipe: 6
        layer_cfg=dict(ffn_cfg=dict(feedforward_channels=toy_ffn)),
    ),
    decoder=dict(
        num_layers=2,  # recipe: 6
        layer_cfg=dict(ffn_cfg=dict(feedforward_channels=toy_ffn)),
    ),
    bbox_head=dict(num_classes=len(_base_.toy_classes)),  # recipe: 80
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),  # recipe: 100
    test_cfg=dict(max_per_img=100),
)  # recipe: 300
train_dataloader = _base_.toy_det_train_dataloader
val_dataloader = _base_.toy_det_val_dataloader
test_dataloader = _base_.toy_det_val_dataloader
val_evaluator = _base_.toy_det_evaluator
test_evaluator = _base_.toy_det_evaluator
train_cfg = _base_.toy_train_cfg
# From scratch a larger lr than the recipe's 1e-4 fine-tuning lr; the
# recipe's clipping (0.1) and layer decay stay.
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
