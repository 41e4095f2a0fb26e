# PoolFormer-S12 Semantic FPN on the synthetic toy ADE20K, trained from
# scratch on CPU in minutes. The pattern works for any segmentation leaf:
# change the first base.
_base_ = [
    '../semantic_fpn_poolformer_s12_ade20k.py',
    '../_base_/toy_ade20k.py',
]
model = _base_.toy_semantic_fpn_model  # a toy-sized head, see the base
train_dataloader = _base_.toy_subset_train_dataloader
val_dataloader = _base_.toy_subset_val_dataloader
test_dataloader = _base_.toy_subset_val_dataloader
train_cfg = _base_.toy_train_cfg
optim_wrapper = _base_.toy_optim_wrapper
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
