"""Runtime glue: CPU distributed training and config adaptation."""
from .cpu import CPUDistributedDataParallel, setup_cpu_distributed, sync_bn_to_bn
from .optimizers import MetaFormerLayerDecayConstructor

__all__ = [
    'CPUDistributedDataParallel', 'MetaFormerLayerDecayConstructor',
    'setup_cpu_distributed', 'sync_bn_to_bn'
]
