# Drop-in use from a stock mmseg config: mmseg's own UperNet-R50 ADE20K
# config with the backbone swapped for ConvFormer-S18, nothing else changed
# (its SGD 80k schedule is kept as it is; the tuned recipes are in
# configs/semantic_fpn_* and configs/upernet_*). mmmetaformer is imported by
# ``custom_imports``, so the config also works with mmseg's own
# tools/train.py, tools/test.py and MMSegInferencer.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py']
custom_imports = dict(imports=['mmmetaformer'], allow_failed_imports=False)
# The stock CheckpointHook writes iter_N.pth in place (a kill or a full disk
# leaves it truncated); mmmetaformer's writes it whole or not at all.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

checkpoint_file = 'hf-hub:timm/convformer_s18.sail_in1k'
model = dict(
    # The R50 base names ResNet weights here, and mmseg's EncoderDecoder
    # passes them to whatever backbone is configured; ConvFormer refuses
    # them with an error saying so. Its weights come from init_cfg.
    pretrained=None,
    backbone=dict(
        _delete_=True,  # drop ResNet's depth, norm_cfg, style, ...
        type='ConvFormer',
        arch='s18',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file),
    ),
    # ConvFormer-S18 stage channels instead of ResNet-50's.
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320),
)  # stage 3 (in_index=2)
