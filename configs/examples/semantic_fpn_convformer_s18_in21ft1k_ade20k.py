# Selecting the ImageNet-21K weights: the Semantic FPN ConvFormer-S18 leaf
# with the backbone starting from the authors' ImageNet-21K-pre-trained,
# ImageNet-1K-fine-tuned weights instead of the ImageNet-1K ones. Every
# ConvFormer/CAFormer leaf works the same way; the published variants are
# in mmmetaformer/models/archs.py (``pretrained_hub_id(family, arch,
# variant=...)``, ``WEIGHT_VARIANTS``; ``pretrained_url`` gives the authors'
# file). From the command line:
#   --cfg-options model.backbone.init_cfg.checkpoint=hf-hub:timm/convformer_s18.sail_in22k_ft_in1k  # noqa: E501
_base_ = ['../semantic_fpn_convformer_s18_ade20k.py']

# = pretrained_hub_id('convformer', 's18', variant='in21ft1k'): timm's copy
# of the authors' convformer_s18_in21ft1k.pth (format timm).
checkpoint_file = 'hf-hub:timm/convformer_s18.sail_in22k_ft_in1k'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint_file)))
