"""Train a detection (mmdet) or segmentation (mmseg) config.

The task follows the config's ``default_scope``. Without a GPU, SyncBN
becomes BN and ``--launcher pytorch`` runs on gloo (see
``mmmetaformer/engine/cpu.py``); on GPUs mmengine's NCCL path is unchanged.

Before training starts, every value the user gave is checked and a bad one
is one line (exit status 2): the backbone's options (``build_runner``),
non-finite optimizer or schedule values, an optimizer torch refuses
(``lr=-1``), and a ``--resume`` target that is not a training state of this
model and optimizer (weights only, another model, another number of
parameter groups, or optimizer state of other shapes), checked before
mmengine loads it. A config with mmengine's plain ``CheckpointHook`` gets
``AtomicCheckpointHook`` (same options), which never leaves a truncated
checkpoint.
"""

import argparse
import math
import os.path as osp
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import (
    LaunchError,
    add_data_and_launcher_options,
    build_runner,
    built_error,
    check_data_roots,
    check_dataset_contents,
    check_images_when_loading,
    check_ops_for,
    explain_data_errors,
    load_config,
    prepare_for_device,
    run_tool,
    set_work_dir,
)

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a detector or segmentor with a MetaFormer backbone'
    )
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or with no value from the '
        'latest checkpoint in the work dir',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision training: fp16 on '
        'a GPU, bf16 on CPU (mmmetaformer.engine.amp)',
    )
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by (GPUs x batch per GPU) / auto_scale_lr.'
        'base_batch_size',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config keys, e.g. train_cfg.max_epochs=1; a key that '
        'looks like a typo of an existing one is an error',
    )
    add_data_and_launcher_options(parser)
    return parser.parse_args(argv)


def nonfinite_values(node, path):
    """``(key, value)`` of every float in a config subtree that is nan or
    inf."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from nonfinite_values(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from nonfinite_values(value, f'{path}[{i}]')
    elif isinstance(node, float) and not math.isfinite(node):
        yield path, node


def check_finite_optimizer_values(cfg):
    """Refuse ``lr=nan`` and any other non-finite number in the optimizer
    wrapper or the schedules: one line naming the key."""
    for key in ('optim_wrapper', 'param_scheduler'):
        for path, value in nonfinite_values(cfg.get(key), key):
            raise LaunchError(
                f'{path}={value} is not a finite number; set '
                f'it with --cfg-options {path}=<number>'
            )


def use_atomic_checkpoints(cfg):
    """mmengine's plain ``CheckpointHook`` -> ``AtomicCheckpointHook``."""
    hook = cfg.get('default_hooks', {}).get('checkpoint')
    if hook and hook.get('type') in (
        'CheckpointHook',
        'mmengine.CheckpointHook',
    ):
        hook['type'] = 'AtomicCheckpointHook'


def build_optimizer(runner):
    """Build the optimizer wrapper now, as ``Runner.train`` would first
    thing: torch's own checks of the values (``Invalid learning rate``)
    become one line, and the resume check can compare against it."""
    try:
        runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    except ValueError as exc:
        raise LaunchError(
            f'optim_wrapper: {built_error(exc)}; fix it in the '
            'config or with --cfg-options'
        ) from exc
    return runner.optim_wrapper


def resume_target(cfg):
    """The checkpoint mmengine will resume from: ``--resume PATH``, else
    (``--resume`` alone) the work dir's latest, or None."""
    if cfg.get('load_from'):
        return cfg.load_from
    from mmengine.runner import find_latest_checkpoint

    return find_latest_checkpoint(cfg.work_dir)


def read_training_state(path):
    """Read a ``--resume`` checkpoint (safely) and refuse, before anything
    is built, one that is not a training state: it must have ``meta``,
    ``state_dict`` and ``optimizer``.

    Raises:
        LaunchError: one line naming the file and the fix.
    """
    from mmmetaformer.checkpoint import read_checkpoint

    if not osp.isfile(path):  # --resume alone: last_checkpoint names it
        raise LaunchError(
            f'--resume: the latest checkpoint {path} does not '
            'exist; pass --resume PATH of one that does'
        )
    checkpoint = read_checkpoint(path)
    needed = ('meta', 'state_dict', 'optimizer')
    lacking = [
        k
        for k in needed
        if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if lacking:
        raise LaunchError(
            f'--resume {path} is not a training state (it has no '
            f'{", ".join(lacking)}); to start a new training from its '
            f'weights use --cfg-options load_from={path} instead'
        )
    return checkpoint


def check_resume_target(runner, path, checkpoint):
    """Refuse, before mmengine loads it, a ``--resume`` training state
    (``read_training_state``) that is not one of this model and optimizer:
    the state dict must fit the model (``compare_state_dicts``, as every
    loader here judges); the optimizer state must have the built
    optimizer's parameter groups, their sizes, and per-parameter state of
    the parameters' shapes.

    Raises:
        LaunchError: one line naming the file and what differs.
    """
    import torch
    from mmengine.model import is_model_wrapper
    from mmengine.optim import OptimWrapperDict

    from mmmetaformer.checkpoint.loading import (
        _first,
        compare_state_dicts,
        model_state_dict,
    )

    model = (
        runner.model.module if is_model_wrapper(runner.model) else runner.model
    )
    missing, unexpected, unfit = compare_state_dicts(
        model.state_dict(), model_state_dict(checkpoint, path)
    )
    if missing or unexpected or unfit:
        what = [
            f'{len(keys)} {name} ({_first(keys, 3)})'
            for name, keys in (
                ('missing', missing),
                ('not in the model', unexpected),
                ('unfit', unfit),
            )
            if keys
        ]
        raise LaunchError(
            f"--resume {path} holds another model's weights "
            f'({"; ".join(what)}); resume from a checkpoint of this config'
        )
    optim_wrapper = runner.optim_wrapper
    if isinstance(optim_wrapper, OptimWrapperDict):
        return  # several optimizers: mmengine's own checks
    state = checkpoint['optimizer']
    groups = state.get('param_groups') if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(
        state.get('state'), dict
    ):
        raise LaunchError(
            f'--resume {path}: its optimizer state is not a '
            'torch optimizer state dict'
        )
    own_groups = optim_wrapper.optimizer.param_groups
    if len(groups) != len(own_groups):
        raise LaunchError(
            f'--resume {path}: its optimizer has {len(groups)} parameter '
            f"groups, this config's {len(own_groups)} (another model or "
            'paramwise_cfg); resume from a checkpoint of this config'
        )
    names = {p: n for n, p in model.named_parameters()}
    index_to_param = {}
    for i, (group, own_group) in enumerate(zip(groups, own_groups)):
        if len(group.get('params', ())) != len(own_group['params']):
            raise LaunchError(
                f'--resume {path}: parameter group {i} of its optimizer has '
                f"{len(group.get('params', ()))} parameters, this config's "
                f'{len(own_group["params"])}; resume from a checkpoint of '
                'this config'
            )
        index_to_param.update(zip(group['params'], own_group['params']))
    for index, values in state['state'].items():
        param = index_to_param.get(index)
        if param is None:
            raise LaunchError(
                f'--resume {path}: its optimizer holds state '
                f'for parameter {index}, which no group has'
            )
        for key, value in values.items() if isinstance(values, dict) else ():
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and value.shape != param.shape
            ):
                raise LaunchError(
                    f"--resume {path}: optimizer state '{key}' of "
                    f'{names.get(param, index)} has shape '
                    f'{tuple(value.shape)}, the parameter '
                    f'{tuple(param.shape)}: the optimizer state is damaged '
                    'or of another model; resume from another checkpoint'
                )


def main(argv=None):
    args = parse_args(argv)
    if str(args.resume).startswith(('hf-hub:', 'http://', 'https://')):
        raise LaunchError(
            f'--resume takes a local training checkpoint; {args.resume} '
            'holds weights, not a training state: start from it with '
            f'--cfg-options load_from={args.resume}'
        )
    cfg, scope = load_config(args.config, args.cfg_options)
    check_finite_optimizer_values(cfg)
    use_atomic_checkpoints(cfg)
    check_ops_for(scope)
    check_data_roots(cfg, scope, ('train_dataloader', 'val_dataloader'))
    check_images_when_loading(cfg, ('train_dataloader', 'val_dataloader'))
    check_dataset_contents(
        cfg,
        scope,
        ('train_dataloader', 'val_dataloader'),
        strict=args.strict_data,
    )

    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise LaunchError(
                f'--amp needs optim_wrapper type OptimWrapper, '
                f'the config has {optim_type}'
            )
        from mmmetaformer.engine.amp import amp_optim_wrapper_type

        cfg.optim_wrapper.type = amp_optim_wrapper_type()
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise LaunchError(
                '--auto-scale-lr needs auto_scale_lr='
                'dict(base_batch_size=...) in the config'
            )
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise LaunchError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume

    target = resume_target(cfg) if cfg.get('resume') else None
    state = read_training_state(target) if target is not None else None
    prepare_for_device(cfg, args.launcher)
    runner = build_runner(cfg)
    build_optimizer(runner)
    if state is not None:
        check_resume_target(runner, target, state)
        del state  # mmengine reads the file again itself
    with explain_data_errors(cfg, ('train_dataloader', 'val_dataloader')):
        runner.train()


if __name__ == '__main__':
    run_tool(main)
