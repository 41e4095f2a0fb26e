# PoolFormer-S12 RetinaNet on the synthetic toy COCO, trained from scratch
# on CPU in minutes. The pattern works for any retinanet leaf: change the
# first base.
_base_ = [
    '../retinanet_poolformer_s12_coco.py',
    '../_base_/toy_coco.py',
]
model = _base_.toy_retinanet_model  # a toy-sized head, see the base
train_dataloader = _base_.toy_det_train_dataloader
val_dataloader = _base_.toy_det_val_dataloader
test_dataloader = _base_.toy_det_val_dataloader
val_evaluator = _base_.toy_det_evaluator
test_evaluator = _base_.toy_det_evaluator
train_cfg = _base_.toy_train_cfg
optim_wrapper = _base_.toy_optim_wrapper
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
