"""Run mmengine's distributed path on machines without a GPU.

On GPUs nothing here is used: the launchers' NCCL path stays mmengine's own.
Without CUDA, mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and
``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]``, which DDP rejects
for CPU modules. ``setup_cpu_distributed`` therefore initialises a gloo
process group itself (the Runner then skips ``init_dist``) and selects
``CPUDistributedDataParallel``, a registered wrapper that drops
``device_ids`` for CPU modules. SyncBN has no CPU kernel, so
``sync_bn_to_bn`` swaps it for BN in a config.
"""

import os

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU modules (gloo backend).

    DDP requires ``device_ids=None`` for CPU modules; the Runner always
    passes the local rank, so it is dropped here when the module is on CPU.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(
            module=module, device_ids=None if on_cpu else device_ids, **kwargs
        )


def _env_from_scheduler(launcher):
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from slurm or MPI variables."""
    if launcher == 'slurm':
        names = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID')
    elif launcher == 'mpi':
        names = (
            'OMPI_COMM_WORLD_RANK',
            'OMPI_COMM_WORLD_SIZE',
            'OMPI_COMM_WORLD_LOCAL_RANK',
        )
    else:
        return
    for target, source in zip(('RANK', 'WORLD_SIZE', 'LOCAL_RANK'), names):
        if source in os.environ:
            os.environ.setdefault(target, os.environ[source])
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')


def setup_cpu_distributed(cfg, launcher):
    """Initialise gloo and the CPU DDP wrapper when there is no GPU.

    Returns:
        bool: whether the CPU path was set up (False on GPU machines and
        for ``launcher='none'``).
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    _env_from_scheduler(launcher)
    missing = [
        k
        for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
        if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f'--launcher {launcher} needs the environment variables '
            f'{missing}; start it with tools/dist_train.sh (torchrun) or '
            f'tools/slurm_train.sh'
        )
    os.environ.setdefault('LOCAL_RANK', '0')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', init_method='env://')
    wrapper_cfg = cfg.get('model_wrapper_cfg') or dict()
    if wrapper_cfg.get('type', 'MMDistributedDataParallel') in (
        'MMDistributedDataParallel',
        'CPUDistributedDataParallel',
    ):
        wrapper_cfg['type'] = 'CPUDistributedDataParallel'
        wrapper_cfg.setdefault('broadcast_buffers', False)
        wrapper_cfg.setdefault(
            'find_unused_parameters', cfg.get('find_unused_parameters', False)
        )
        cfg.model_wrapper_cfg = wrapper_cfg
    print_log(
        f'No GPU: rank {dist.get_rank()}/{dist.get_world_size()} runs on CPU '
        f'with the gloo backend',
        logger='current',
    )
    return True


def sync_bn_to_bn(cfg):
    """Replace every ``SyncBN`` norm config by ``BN`` in place.

    Returns:
        int: how many were replaced.
    """
    count = 0

    def visit(node):
        nonlocal count
        if isinstance(node, dict):
            if node.get('type') == 'SyncBN':
                node['type'] = 'BN'
                count += 1
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg)
    return count
