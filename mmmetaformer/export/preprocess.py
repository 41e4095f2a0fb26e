"""The data preprocessors' test-time work inside the graph."""

import torch
import torch.nn as nn

from .ops import pad_to_multiple


class UnsupportedModel(Exception):
    """A module the exporter cannot write in standard ONNX ops.

    ``str()`` is one line: the module, then the reason.
    """

    def __init__(self, module, reason):
        super().__init__(f'cannot export {module}: {reason}')


class Preprocess(nn.Module):
    """``[N, 3, H, W]`` float 0-255 in the loaded channel order -> the
    backbone's input: channel swap (``bgr_to_rgb``), ``(x - mean) / std``,
    zero padding (after normalisation, as mmdet's and mmseg's
    ``stack_batch``) to multiples of ``divisor``."""

    def __init__(self, mean, std, swap_channels, divisor=1, pad_value=0.0):
        super().__init__()
        self.swap_channels = bool(swap_channels)
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer(
                'mean', mean.detach().clone().reshape(1, -1, 1, 1).float()
            )
            self.register_buffer(
                'std', std.detach().clone().reshape(1, -1, 1, 1).float()
            )
        self.divisor = int(divisor or 1)
        self.pad_value = float(pad_value)

    def forward(self, image):
        x = image.float()
        if self.swap_channels:
            x = x[:, [2, 1, 0], ...]
        if self.normalize:
            x = (x - self.mean) / self.std
        return pad_to_multiple(x, self.divisor, self.pad_value)


def image_hw(image):
    """The input's height and width, 0-dim int64 tensors (traced)."""
    shape = torch._shape_as_tensor(image)
    return shape[2], shape[3]
