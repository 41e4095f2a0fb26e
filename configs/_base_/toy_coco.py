# Overrides that run any RetinaNet or Mask R-CNN leaf config on the
# synthetic toy COCO (tools/mmmetaformer_tools/toy.py), at a size a CPU trains
# in minutes. Make the data with
#     python tools/misc/make_toy_dataset.py coco data/toy_coco \
#         --num-train 800 --num-val 32 --img-size 128
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
# Toy images are 128x128 (tools/demo.py): the recipe's keep-ratio resize +
# flip at that scale (a no-op resize for these images, but any other image
# size works). At 128 px a PoolFormer-S12 RetinaNet step sees 4x the images
# per second of 256 px, and the toy objects (32 to 58 px, a stick up to 72)
# match the P3/P4 anchors (32 to 101 px).
toy_scale = (128, 128)


def _pipelines(with_mask):
    load = dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask)
    train = [
        dict(type='LoadImageFromFile'),
        load,
        dict(type='Resize', scale=toy_scale, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    test = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=toy_scale, keep_ratio=True),
        load,
        dict(
            type='PackDetInputs',
            meta_keys=(
                'img_id',
                'img_path',
                'ori_shape',
                'img_shape',
                'scale_factor',
            ),
        ),
    ]
    return train, test


def _loaders(with_mask, metainfo, batch_size):
    # called before the del below, which ruff cannot follow
    train_pipeline, test_pipeline = _pipelines(with_mask)  # noqa: F821
    # One process, no loader workers: the data is tiny and the CPU is
    # better spent on the model.
    train = dict(
        batch_size=batch_size,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            data_root=toy_data_root, pipeline=train_pipeline, **metainfo
        ),
    )
    val = dict(
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            data_root=toy_data_root, pipeline=test_pipeline, **metainfo
        ),
    )
    return train, val


# The classes the toy images show, in COCO id order (mmdet numbers the
# labels in the json's category order, whatever the order given here).
# CocoMetric averages AP over the classes with ground truth, so a 5-class
# and an 80-class model are scored alike.
toy_classes = ('airplane', 'sports ball', 'kite', 'baseball bat', 'tv')
# RetinaNet / Faster R-CNN (boxes, 5 classes; batch 8 of 128 px: 10
# images/s on 2 cores against 6 for batch 2, the backbone's GEMMs fill the
# cores better) and Mask R-CNN (boxes and masks, the recipe's 80 classes and
# batch 2).
toy_det_train_dataloader, toy_det_val_dataloader = _loaders(
    False, dict(metainfo=dict(classes=toy_classes)), batch_size=8
)
toy_ins_train_dataloader, toy_ins_val_dataloader = _loaders(
    True, {}, batch_size=2
)
toy_det_evaluator = dict(
    ann_file=toy_data_root + 'annotations/instances_val2017.json'
)
toy_ins_evaluator = dict(
    ann_file=toy_data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
)
del _pipelines, _loaders

toy_model = dict(
    # From scratch: no download, and the run shows the recipe itself learns.
    backbone=dict(init_cfg=None)
)

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
        stacked_convs=2,  # recipe: 4
        # From scratch the head's convs learn faster normalised (measured
        # on the dev split, 600 iterations: box mAP 0.291 vs 0.256).
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
    ),
)

# 800 images x 6 epochs = 600 iterations of 8 images (about 0.7 s each on
# 2 idle cores: 7 minutes with the validations).
toy_max_epochs = 6
toy_train_cfg = dict(max_epochs=toy_max_epochs, val_interval=1)
# AdamW from scratch, chosen on the dev split (validation images of
# generator seed 1, never the demo's): with batch 8 and the GN head, lr
# 6e-4 reached box mAP 0.543 after 600 iterations, 3e-4 0.411.
toy_optim_wrapper = dict(
    optimizer=dict(lr=6e-4, weight_decay=0.05), clip_grad=dict(max_norm=10.0)
)  # from scratch, early steps can spike
toy_param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50
    ),  # iterations of warmup
    dict(
        type='CosineAnnealingLR',
        T_max=toy_max_epochs,
        eta_min=0.0,
        by_epoch=True,
        convert_to_iter_based=True,  # decays every iteration
        begin=0,
        end=toy_max_epochs,
    ),
]
toy_default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(interval=toy_max_epochs)
)

# Not in any leaf, so set directly: reproducible toy runs.
randomness = dict(seed=0)
