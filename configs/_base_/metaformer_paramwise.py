# Which parameters get weight decay; shared by the detection and
# segmentation recipes (``paramwise_cfg=_base_.metaformer_paramwise_cfg``).
#
# Only tensors with two or more dimensions decay: conv and linear weights.
# ``flat_decay_mult=0`` exempts every 1-D parameter, whatever the family and
# whatever its layers are named:
#   - norm weights and biases (block, stem, downsampling and output norms,
#     ConvMixer's BatchNorms, the heads' BN),
#   - layer scales and residual scales (shape [C]),
#   - StarReLU's scale and bias (shape [1]),
#   - conv and linear biases.
# mmengine's ``norm_decay_mult`` alone would still decay the scales and
# StarReLU scalars, and ``custom_keys`` would need a name list per family.
# This is timm's rule (``ndim <= 1`` -> no decay), the one the ImageNet
# weights were trained with.
metaformer_paramwise_cfg = dict(flat_decay_mult=0.0)
