"""Runtime glue: CPU distributed training, config adaptation, and the
checkpoint hooks (atomic saves, exact resume, strict evaluation loading)."""
from .checkpoint_hooks import (AtomicCheckpointHook, ExactResumeHook,
                               StrictLoadHook)
from .cpu import CPUDistributedDataParallel, setup_cpu_distributed, sync_bn_to_bn
from .optimizers import MetaFormerLayerDecayConstructor

__all__ = [
    'AtomicCheckpointHook', 'ExactResumeHook', 'StrictLoadHook',
    'CPUDistributedDataParallel', 'MetaFormerLayerDecayConstructor',
    'setup_cpu_distributed', 'sync_bn_to_bn'
]
