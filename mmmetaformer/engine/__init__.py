"""Runtime glue: CPU distributed training, config adaptation, the
checkpoint hooks (atomic saves, exact resume, strict evaluation loading),
the NaN guard, and mixed precision on CPU."""

from .amp import CPUAmpOptimWrapper
from .checkpoint_hooks import (
    AtomicCheckpointHook,
    CheckpointWriteError,
    ExactResumeHook,
    NonFiniteWeightsError,
    OutputWriteError,
    StrictLoadHook,
    atomic_output,
)
from .compile import EagerOptimizerStepHook
from .cpu import (
    CPUDistributedDataParallel,
    setup_cpu_distributed,
    sync_bn_to_bn,
)
from .nan_guard import NaNGuardHook, NonFiniteTrainingError
from .optimizers import MetaFormerLayerDecayConstructor

__all__ = [
    'AtomicCheckpointHook',
    'CheckpointWriteError',
    'ExactResumeHook',
    'NaNGuardHook',
    'NonFiniteTrainingError',
    'NonFiniteWeightsError',
    'OutputWriteError',
    'atomic_output',
    'StrictLoadHook',
    'CPUAmpOptimWrapper',
    'CPUDistributedDataParallel',
    'EagerOptimizerStepHook',
    'MetaFormerLayerDecayConstructor',
    'setup_cpu_distributed',
    'sync_bn_to_bn',
]
