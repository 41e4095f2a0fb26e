"""An mmseg ``EncoderDecoder`` as one traceable graph: image -> logits.

``SegmentorGraph(model)(image)`` computes what ``model.test_step`` puts in
``seg_logits`` for a batch of one size with ``img_shape = ori_shape =`` the
input size, whole-image inference: preprocessing (channel swap,
normalisation), backbone, neck, decode head, bilinear resize to the input.

Two mmseg modules freeze the export size into a trace; ``export_swaps``
replaces them by export-friendly equivalents computing the same numbers,
on the model being exported only:

* ``Upsample`` (``int(t * scale_factor)`` in Python) -> ``ScaleUpsample``;
* ``nn.AdaptiveAvgPool2d`` (the PPM's bins 1, 2, 3, 6; no dynamic ONNX
  form) -> ``ExactAdaptiveAvgPool2d`` (two averaging matrices).
"""

import torch.nn as nn
import torch.nn.functional as F

from .ops import ExactAdaptiveAvgPool2d, ScaleUpsample
from .preprocess import Preprocess, UnsupportedModel


def export_swaps(model):
    """Swap the size-freezing modules of ``model`` in place (see the module
    docstring). Returns the number swapped."""
    from mmseg.models.utils import Upsample

    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            new = None
            if isinstance(child, Upsample) and not child.size:
                factor = child.scale_factor
                if float(factor) != int(factor):
                    raise UnsupportedModel(
                        f'{parent_name}.{name} (mmseg Upsample)',
                        f'scale_factor={factor} is not an integer; its '
                        'output size int(t * scale_factor) cannot be traced',
                    )
                new = ScaleUpsample(
                    int(factor), child.mode, child.align_corners
                )
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                new = ExactAdaptiveAvgPool2d(child.output_size)
            if new is not None:
                setattr(parent, name, new)
                swapped += 1
    return swapped


class SegmentorGraph(nn.Module):
    """``image [N, 3, H, W]`` (float, 0-255, channel order as loaded) ->
    ``logits [N, C, H, W]``."""

    output_names = ('logits',)

    def __init__(self, model):
        super().__init__()
        from mmseg.models.decode_heads.decode_head import BaseDecodeHead

        if type(model).__name__ != 'EncoderDecoder':
            raise UnsupportedModel(
                type(model).__name__,
                'the exporter handles EncoderDecoder '
                'segmentors (one decode head)',
            )
        head = type(model.decode_head)
        if (
            head.predict is not BaseDecodeHead.predict
            or head.predict_by_feat is not BaseDecodeHead.predict_by_feat
        ):
            raise UnsupportedModel(
                f'decode_head ({head.__name__})',
                'its predict is not '
                "BaseDecodeHead's (logits resized to the input); the "
                'exporter handles heads such as FPNHead and UPerHead',
            )
        preprocessor = model.data_preprocessor
        if getattr(preprocessor, 'test_cfg', None):
            raise UnsupportedModel(
                'data_preprocessor (SegDataPreProcessor)',
                f'test-time padding test_cfg={preprocessor.test_cfg} is not '
                'exported; pad in the test pipeline (ResizeToMultiple)',
            )
        self.preprocess = Preprocess(
            preprocessor.mean if preprocessor._enable_normalize else None,
            preprocessor.std if preprocessor._enable_normalize else None,
            preprocessor.channel_conversion,
            divisor=1,
            pad_value=0,
        )
        self.model = model
        self.align_corners = model.decode_head.align_corners

    def forward(self, image):
        x = self.preprocess(image)
        logits = self.model.decode_head(self.model.extract_feat(x))
        return F.interpolate(
            logits,
            size=image.shape[2:],
            mode='bilinear',
            align_corners=self.align_corners,
        )
