# Overrides that run any RetinaNet or Mask R-CNN leaf config on the
# synthetic toy COCO (mmmetaformer/datasets/toy.py), at a size a CPU trains
# in minutes. Make the data with
#     python tools/misc/make_toy_dataset.py coco data/toy_coco \
#         --num-train 400 --num-val 32 --img-size 256
# (`make demo` does this). The images show 5 of the 80 classes; the json
# lists all 80, so the Mask R-CNN toy keeps num_classes=80 unchanged, and the
# box-only toys train a 5-class head on ``toy_det_*`` (see toy_classes).
#
# How to layer it (see configs/toy/): mmengine refuses a key defined in two
# bases, so these are ``toy_*`` variables, and a toy config lists the leaf
# and this file as bases and assigns each variable to its real key:
#     _base_ = ['../retinanet_<...>_coco.py', '../_base_/toy_coco.py']
#     model = _base_.toy_retinanet_model
#     train_dataloader = _base_.toy_det_train_dataloader  # or toy_ins_*
#     ...
# Each is merged into the leaf's value, so only what is written here
# changes; lists (pipelines, param_scheduler) are replaced whole.

toy_data_root = 'data/toy_coco/'
# Toy images are 256x256: the recipe's keep-ratio resize + flip at that
# scale (a no-op resize for these images, but any other image size works).
toy_scale = (256, 256)


def _pipelines(with_mask):
    load = dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask)
    train = [
        dict(type='LoadImageFromFile'), load,
        dict(type='Resize', scale=toy_scale, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')
    ]
    test = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=toy_scale, keep_ratio=True), load,
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                       'scale_factor'))
    ]
    return train, test


def _loaders(with_mask, metainfo):
    train_pipeline, test_pipeline = _pipelines(with_mask)
    # One process, no loader workers: the data is tiny and the CPU is
    # better spent on the model.
    train = dict(
        batch_size=2,  # twice the updates of batch 4 for the same compute
        num_workers=0,
        persistent_workers=False,
        dataset=dict(data_root=toy_data_root, pipeline=train_pipeline,
                     **metainfo))
    val = dict(
        num_workers=0,
        persistent_workers=False,
        dataset=dict(data_root=toy_data_root, pipeline=test_pipeline,
                     **metainfo))
    return train, val


# The classes the toy images show, in COCO id order (mmdet numbers the
# labels in the json's category order, whatever the order given here).
# CocoMetric averages AP over the classes with ground truth, so a 5-class
# and an 80-class model are scored alike.
toy_classes = ('airplane', 'sports ball', 'kite', 'baseball bat', 'tv')
# RetinaNet / Faster R-CNN (boxes, 5 classes) and Mask R-CNN (boxes and
# masks, the recipe's 80 classes).
toy_det_train_dataloader, toy_det_val_dataloader = _loaders(
    False, dict(metainfo=dict(classes=toy_classes)))
toy_ins_train_dataloader, toy_ins_val_dataloader = _loaders(True, {})
toy_det_evaluator = dict(
    ann_file=toy_data_root + 'annotations/instances_val2017.json')
toy_ins_evaluator = dict(
    ann_file=toy_data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'])
del _pipelines, _loaders

toy_model = dict(
    # From scratch: no download, and the run shows the recipe itself learns.
    backbone=dict(init_cfg=None))

# RetinaNet at toy size (tools/demo.py measured where a step's time goes:
# the recipe's head, 4 stacked 256-channel convs per branch on 5 levels and
# an 80-class classifier, took 65% of it, the backbone 20%). The network
# keeps its structure (FPN P3..P7 at strides 8..128, the anchors, focal and
# L1 losses, the assigner); only the widths, the depth of the head and the
# class count change:
toy_head_channels = 128  # FPN and head width (recipe: 256)
toy_retinanet_model = dict(
    backbone=dict(init_cfg=None),  # from scratch, as toy_model
    neck=dict(out_channels=toy_head_channels),
    bbox_head=dict(
        num_classes=len(toy_classes),  # recipe: 80
        in_channels=toy_head_channels,
        feat_channels=toy_head_channels,
        stacked_convs=2))  # recipe: 4

# 400 images x 3 epochs = 600 iterations of 2 images (0.78 s each on 2
# idle cores: 7.8 minutes).
toy_max_epochs = 3
toy_train_cfg = dict(max_epochs=toy_max_epochs, val_interval=1)
# From scratch, AdamW at 1e-3 made the focal loss climb back after warmup;
# 3e-4 (measured: box mAP 0.051 vs 0.002 after 3 epochs) learns steadily.
toy_optim_wrapper = dict(
    optimizer=dict(lr=3e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))  # from scratch, early steps can spike
toy_param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=False,
        begin=0,
        end=100),
    dict(
        type='CosineAnnealingLR',
        T_max=toy_max_epochs,
        eta_min=0.0,
        by_epoch=True,
        convert_to_iter_based=True,  # decays every iteration
        begin=0,
        end=toy_max_epochs)
]
toy_default_hooks = dict(
    logger=dict(interval=16),
    checkpoint=dict(interval=toy_max_epochs))

# Not in any leaf, so set directly: reproducible toy runs.
randomness = dict(seed=0)
