"""Test a checkpoint of a detection or segmentation config.

Detection reports the config's metrics (COCO box/mask AP via CocoMetric);
segmentation reports mIoU, mAcc and aAcc with the per-class table
(IoUMetric), in whole or slide mode as the config's ``test_cfg`` says
(``--cfg-options model.test_cfg.mode=slide`` switches).

The checkpoint is read without running pickled code and must hold exactly
the model's tensors (``StrictLoadHook``): a file that leaves weights
unloaded, or brings others, is an error (exit 2) and no metric is printed;
so are weights holding nan or inf (``--allow-nonfinite`` evaluates them).

``--out`` and ``--show-dir`` write what mmdet's and mmseg's own test tools
write (the results pickle, or one label-map PNG per image; the drawn
pictures, of every image), each file whole or not at all
(``mmmetaformer_tools.result_files``).
"""

import argparse
import os.path as osp
import sys

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.abspath(__file__))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import (
    LaunchError,
    add_data_and_launcher_options,
    build_runner,
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
        description='Test a detector or segmentor checkpoint'
    )
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where to save the test logs')
    parser.add_argument(
        '--out',
        help='detection: dump predictions to this .pkl file; '
        'segmentation: save predicted label maps into this directory',
    )
    parser.add_argument(
        '--show-dir', help='save pictures of the predictions here'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config keys, e.g. model.test_cfg.mode=slide',
    )
    parser.add_argument(
        '--allow-nonfinite',
        action='store_true',
        help='evaluate weights holding nan or inf (refused '
        'by default, naming the first such tensor)',
    )
    add_data_and_launcher_options(parser)
    return parser.parse_args(argv)


def enable_visualization(cfg, scope, show_dir):
    """Draw the predictions into ``show_dir`` as mmdet's and mmseg's test
    tools do, each picture written whole or not at all."""
    from mmmetaformer_tools.result_files import write_pictures_atomically

    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise LaunchError(
            '--show-dir needs default_hooks.visualization in the config'
        )
    hook['draw'] = True
    if scope == 'mmdet':
        hook['test_out_dir'] = show_dir
    else:
        cfg.visualizer['save_dir'] = show_dir
        # every prediction, as mmdet's hook draws; mmseg's draws every 50th
        hook.setdefault('interval', 1)
    write_pictures_atomically(cfg, scope)


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = load_config(args.config, args.cfg_options)
    check_ops_for(scope)
    check_data_roots(cfg, scope, ('test_dataloader',))
    check_images_when_loading(cfg, ('test_dataloader',))
    check_dataset_contents(
        cfg, scope, ('test_dataloader',), strict=args.strict_data
    )
    if not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, scope, args.show_dir)
    if (
        args.out
        and scope == 'mmdet'
        and not args.out.endswith(('.pkl', '.pickle'))
    ):
        raise LaunchError(
            f'--out must be a .pkl file for detection, got {args.out}'
        )
    if args.out and scope == 'mmseg' and osp.isfile(args.out):
        raise LaunchError(
            f'--out {args.out} is a file; segmentation writes a label map '
            'per image into a folder: give a folder (created if needed)'
        )

    prepare_for_device(cfg, args.launcher)
    runner = build_runner(cfg)
    from mmmetaformer.engine import StrictLoadHook

    runner.register_hook(StrictLoadHook(allow_nonfinite=args.allow_nonfinite))
    with explain_data_errors(cfg, ('test_dataloader',)):
        if args.out:
            # mmdet's results pickle, mmseg's label maps (what their own
            # test tools write for --out), each file through atomic_output;
            # test_evaluator builds the dataset
            from mmmetaformer_tools.result_files import (
                SegLabelMapWriter,
                det_results_dump,
            )

            runner.test_evaluator.metrics.append(
                det_results_dump(args.out)
                if scope == 'mmdet'
                else SegLabelMapWriter(args.out)
            )
        return runner.test()


if __name__ == '__main__':
    run_tool(main)
