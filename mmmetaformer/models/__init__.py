"""Models: the plain-PyTorch ``core``, the registered ``backbones`` around it,
and ``archs``, the table of every published variant."""

from . import registration  # noqa: F401  (registers StarReLU, norms, mixers)
from .backbones import *  # noqa: F401,F403
from .backbones import __all__  # noqa: F401
