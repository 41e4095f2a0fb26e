# Selecting the ImageNet-21K weights: the Semantic FPN ConvFormer-S18 leaf
# with the backbone starting from the authors' ImageNet-21K-pre-trained,
# ImageNet-1K-fine-tuned file instead of the ImageNet-1K one. Every
# ConvFormer/CAFormer leaf works the same way; the published variants and
# their URLs are in mmmetaformer/models/archs.py (``pretrained_url(family,
# arch, variant=...)``, ``WEIGHT_VARIANTS``). From the command line:
#   --cfg-options model.backbone.init_cfg.checkpoint=https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18_in21ft1k.pth  # noqa: E501
_base_ = ['../semantic_fpn_convformer_s18_ade20k.py']

# = pretrained_url('convformer', 's18', variant='in21ft1k'); the file has
# the same key layout as the ImageNet-1K one (format metaformer_baselines).
checkpoint_file = 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18_in21ft1k.pth'  # noqa: E501
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint_file)))
