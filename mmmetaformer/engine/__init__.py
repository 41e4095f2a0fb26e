"""Runtime glue: CPU distributed training, config adaptation, and the
checkpoint hooks (atomic saves, exact resume, strict evaluation loading),
and mixed precision on CPU."""
from .amp import CPUAmpOptimWrapper
from .checkpoint_hooks import (AtomicCheckpointHook, ExactResumeHook,
                               StrictLoadHook)
from .cpu import CPUDistributedDataParallel, setup_cpu_distributed, sync_bn_to_bn
from .optimizers import MetaFormerLayerDecayConstructor

__all__ = [
    'AtomicCheckpointHook', 'ExactResumeHook', 'StrictLoadHook',
    'CPUAmpOptimWrapper', 'CPUDistributedDataParallel', 'MetaFormerLayerDecayConstructor',
    'setup_cpu_distributed', 'sync_bn_to_bn'
]
