# ConvFormer-S18 UperNet (the 160k recipe, with stage-wise lr decay) on
# the synthetic toy ADE20K, from scratch on CPU. Same layering as
# semantic_fpn_poolformer_s12_toy_ade20k.py; works for any UperNet leaf.
_base_ = [
    '../upernet_convformer_s18_ade20k.py',
    '../_base_/toy_ade20k.py',
]
# Sliding-window testing at the toy crop size (the recipe: 512 / 341).
model = dict(
    _base_.toy_model,
    test_cfg=dict(crop_size=_base_.toy_crop_size, stride=(85, 85)),
)
train_dataloader = _base_.toy_train_dataloader
val_dataloader = _base_.toy_val_dataloader
test_dataloader = _base_.toy_val_dataloader
train_cfg = _base_.toy_train_cfg
optim_wrapper = _base_.toy_optim_wrapper
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
