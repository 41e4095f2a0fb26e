"""Runtime glue: CPU distributed training and config adaptation."""
from .cpu import CPUDistributedDataParallel, setup_cpu_distributed, sync_bn_to_bn

__all__ = [
    'CPUDistributedDataParallel', 'setup_cpu_distributed', 'sync_bn_to_bn'
]
