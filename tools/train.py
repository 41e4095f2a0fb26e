"""Train a detection (mmdet) or segmentation (mmseg) config.

The task follows the config's ``default_scope``. Without a GPU, SyncBN
becomes BN and ``--launcher pytorch`` runs on gloo (see
``mmmetaformer/engine/cpu.py``); on GPUs mmengine's NCCL path is unchanged.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from mmmetaformer.utils.launch import (  # noqa: E402
    LaunchError,
    build_runner,
    check_data_roots,
    check_images_when_loading,
    check_ops_for,
    explain_data_errors,
    load_config,
    prepare_for_device,
    run_tool,
    set_work_dir)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a detector or segmentor with a MetaFormer '
        'backbone')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or with no value from the '
        'latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision training: fp16 on '
                        'a GPU, bf16 on CPU (mmmetaformer.engine.amp)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by (GPUs x batch per GPU) / auto_scale_lr.'
        'base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config keys, e.g. train_cfg.max_epochs=1; a key that '
        'looks like a typo of an existing one is an error')
    parser.add_argument('--launcher',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options)
    check_ops_for(scope)
    check_data_roots(cfg, scope, ('train_dataloader', 'val_dataloader'))
    check_images_when_loading(cfg, ('train_dataloader', 'val_dataloader'))

    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise LaunchError(f'--amp needs optim_wrapper type OptimWrapper, '
                              f'the config has {optim_type}')
        from mmmetaformer.engine.amp import amp_optim_wrapper_type
        cfg.optim_wrapper.type = amp_optim_wrapper_type()
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise LaunchError('--auto-scale-lr needs auto_scale_lr='
                              'dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise LaunchError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume

    prepare_for_device(cfg, args.launcher)
    runner = build_runner(cfg)
    with explain_data_errors(cfg, ('train_dataloader', 'val_dataloader')):
        runner.train()


if __name__ == '__main__':
    run_tool(main)
