"""Inference speed and peak memory of a detection or segmentation config.

    python tools/analysis/benchmark.py CONFIG [CHECKPOINT]
        [--num-images 20] [--warmup 5] [--device cpu|cuda]
        [--image-size HxW] [--threads N] [--cfg-options KEY=VALUE ...]
        [--backend pytorch|onnxruntime]

What runs is what ``tools/test.py`` runs, minus the metric: the config's
test dataloader (its real dataset and test pipeline) feeds
``model.test_step`` (data preprocessor, forward, post-processing such as
NMS or resizing the logits back) one batch at a time under
``torch.no_grad()``. ``--warmup`` batches run untimed, then ``--num-images``
images are timed; a dataset shorter than that is cycled.

``--image-size HxW`` needs no dataset: random ``HxW`` images go through
the same test pipeline (loaded from memory, annotation loading dropped),
so a 800x1216 image is still resized as the config says.

Reported:

* model img/s: images divided by the time spent in ``test_step`` (with a
  CUDA synchronize after each), the figure mmdet's and mmseg's own
  benchmarks report;
* overall img/s: the same images divided by the elapsed time including
  data loading;
* median ms per batch of ``test_step``;
* peak MB: the extra tensor memory of one more (untimed) ``test_step``
  on top of the model's weights, see
  ``mmmetaformer_tools.measure.peak_step_memory``; and the process's peak
  resident memory.

``--backend onnxruntime`` times a file from ``tools/export_onnx.py``
(CHECKPOINT is the ``.onnx`` file) in place of the PyTorch model: the same
data and test pipeline, ``test_step`` running the file in onnxruntime
(``--threads`` intra-op threads) with the same post-processing outside the
graph (rescaling to the original image); peak tensor MB counts PyTorch's
tensors only, so it is reported as n/a there.

``--mac-floor`` adds the time the network's multiply-accumulates take at
the machine's fp32 GEMM rate: the MACs of the whole exported graph
(``count_model_macs``: what onnxruntime runs; the PyTorch model runs the
same layers, its RoI heads on the proposals it keeps rather than the
graph's fixed number) for the timed image size, over the rate of a
``2048^3`` matrix product with the same threads. When a timed step is
faster than that, its own rate is the floor's (a floor is never above a
measured time). No exact fp32 runtime on this machine does the network's
work in less, so ``floor / PyTorch ms`` is the lowest latency ratio any
backend can reach; pre-processing and post-processing outside the network
come on top.

Without CHECKPOINT the weights are the model's own random initialisation
(no ImageNet download). Detection post-processing depends on how many
boxes pass the score threshold, so a trained checkpoint can time
differently.
"""

import argparse
import os.path as osp
import resource
import statistics
import sys
import time

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import (
    LaunchError,
    check_data_roots,
    check_ops_for,
    explain_data_errors,
    load_config,
    run_tool,
)
from mmmetaformer_tools.measure import (
    floor_ms,
    gemm_rate,
    machine_summary,
    parse_hw,
    peak_step_memory,
    prepare_device,
    synchronize,
)

import torch
from mmengine.config import DictAction

# The in-memory loader that replaces LoadImageFromFile for --image-size.
NDARRAY_LOADERS = dict(
    mmdet='mmdet.LoadImageFromNDArray', mmseg='mmseg.LoadImageFromNDArray'
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Images per second and peak memory of a detection or '
        'segmentation config at inference'
    )
    parser.add_argument('config', help='config file')
    parser.add_argument(
        'checkpoint', nargs='?', help='checkpoint (default: random weights)'
    )
    parser.add_argument(
        '--num-images',
        type=int,
        default=20,
        help='timed images (default: %(default)s)',
    )
    parser.add_argument(
        '--warmup',
        type=int,
        default=5,
        help='untimed batches first (default: %(default)s)',
    )
    parser.add_argument(
        '--device',
        choices=('cpu', 'cuda'),
        default='cuda' if torch.cuda.is_available() else 'cpu',
    )
    parser.add_argument(
        '--image-size',
        metavar='HxW',
        help='random images of this size through the test '
        'pipeline instead of the dataset',
    )
    parser.add_argument(
        '--threads', type=int, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config keys',
    )
    parser.add_argument(
        '--backend',
        choices=('pytorch', 'onnxruntime'),
        default='pytorch',
        help='onnxruntime: CHECKPOINT is a file from tools/export_onnx.py',
    )
    parser.add_argument(
        '--mac-floor',
        action='store_true',
        help="also print the network's MAC floor at the machine's fp32 "
        'GEMM rate, and the median step against it',
    )
    return parser.parse_args(argv)


def build_model(cfg, checkpoint, device):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    import mmmetaformer  # noqa: F401  (registers our modules)
    from mmmetaformer.checkpoint import load_model_strictly

    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None  # no ImageNet download
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
    else:  # read without pickled code; exactly the model's tensors
        load_model_strictly(model, checkpoint)
    # One process: SyncBN would need a process group (and a GPU).
    model = revert_sync_batchnorm(model)
    return model.to(device).eval()


def random_image_batches(cfg, scope, size):
    """Endless batches of one random ``size`` image, test pipeline applied."""
    import numpy as np
    from mmengine.dataset import Compose, pseudo_collate

    pipeline = []
    for transform in cfg.test_dataloader.dataset.pipeline:
        kind = transform['type'].split('.')[-1]
        if kind == 'LoadAnnotations':
            continue  # nothing to annotate; metrics are not computed
        if kind in ('LoadImageFromFile', 'LoadCheckedImageFromFile'):
            transform = dict(type=NDARRAY_LOADERS[scope])
        pipeline.append(transform)
    pipeline = Compose(pipeline)
    image = np.random.default_rng(0).integers(
        0, 256, (*size, 3), dtype=np.uint8
    )
    while True:
        yield pseudo_collate([pipeline(dict(img=image.copy(), img_id=0))])


def dataset_batches(cfg):
    """Endless batches of the config's test dataloader (cycled).

    A broken dataset file (annotations, images) is a ``LaunchError`` that
    names it.
    """
    from mmengine.runner import Runner

    with explain_data_errors(cfg, ('test_dataloader',)):
        loader = Runner.build_dataloader(cfg.test_dataloader)
        while True:
            yield from loader


def batch_size_of(data):
    inputs = data['inputs']
    return (
        len(inputs) if isinstance(inputs, (list, tuple)) else inputs.shape[0]
    )


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1 or args.warmup < 0:
        raise LaunchError(
            f'--num-images must be >= 1 (got '
            f'{args.num_images}) and --warmup >= 0 (got '
            f'{args.warmup})'
        )
    prepare_device(args.device, args.threads)
    size = (
        parse_hw(args.image_size, '--image-size') if args.image_size else None
    )
    cfg, scope = load_config(args.config, args.cfg_options)
    check_ops_for(scope)
    if size is None:
        check_data_roots(cfg, scope, ('test_dataloader',))
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise LaunchError(f'Checkpoint file not found: {args.checkpoint}')

    from mmengine.registry import init_default_scope

    init_default_scope(scope)
    if args.backend == 'onnxruntime':
        if not str(args.checkpoint).endswith('.onnx'):
            raise LaunchError(
                f'--backend onnxruntime times an exported '
                f'file: give the .onnx from '
                f'tools/export_onnx.py as CHECKPOINT, not '
                f'{args.checkpoint}'
            )
        from mmmetaformer.export.runtime import OnnxModel, bind

        # the PyTorch model only post-processes (segmentation: resize back)
        model = bind(
            build_model(cfg, None, 'cpu'),
            OnnxModel(
                args.checkpoint, threads=args.threads, device=args.device
            ),
        )
    else:
        model = build_model(cfg, args.checkpoint, args.device)
    batches = (
        random_image_batches(cfg, scope, size)
        if size
        else dataset_batches(cfg)
    )

    def step(data):
        with torch.no_grad():
            return model.test_step(data)

    from mmengine.utils import ProgressBar

    # On stderr, so that stdout holds only the report.
    progress = ProgressBar(args.warmup + args.num_images, file=sys.stderr)
    for _ in range(args.warmup):
        step(next(batches))
        progress.update()
    synchronize(args.device)
    images, step_times = 0, []
    start = time.perf_counter()
    while images < args.num_images:
        data = next(batches)
        synchronize(args.device)
        tic = time.perf_counter()
        step(data)
        synchronize(args.device)
        step_times.append(time.perf_counter() - tic)
        images += batch_size_of(data)
        progress.update(batch_size_of(data))
    sys.stderr.write('\n')
    elapsed = time.perf_counter() - start
    data = next(batches)
    peak = (
        'n/a'
        if args.backend == 'onnxruntime'
        else '%.0f'
        % (peak_step_memory(lambda: step(data), args.device) / 2**20)
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    median_ms = statistics.median(step_times) * 1e3
    floor = (
        mac_floor(cfg, scope, data, args.device, median_ms)
        if args.mac_floor
        else None
    )

    source = (
        f'random {size[0]}x{size[1]} images' if size else 'the test dataset'
    )
    print(f'## Inference benchmark: {args.config}')
    print(machine_summary(args.device, packages=(scope,)))
    print(
        f'- {images} images from {source} after {args.warmup} warmup '
        f'batch(es); weights: {args.checkpoint or "random"}; backend: '
        f'{args.backend}\n'
    )
    print(
        '| config | device | images | model img/s | overall img/s | '
        'median ms/batch | peak tensor MB | peak RSS MB |'
    )
    print('|---|---|---|---|---|---|---|---|')
    print(
        f'| {osp.basename(args.config)} | {args.device} | {images} | '
        f'{images / sum(step_times):.2f} | {images / elapsed:.2f} | '
        f'{median_ms:.1f} | {peak} | {rss:.0f} |'
    )
    if floor:
        print(f'\n{floor}')


def mac_floor(cfg, scope, data, device, median_ms):
    """One line: the network's MACs for ``data``'s image, the floor they
    make at the fp32 GEMM rate (see the module docstring) and the median
    step against it."""
    from mmmetaformer_tools.complexity import count_model_macs

    image = data['inputs'][0][None].float()
    # a fresh CPU model of the config: with --backend onnxruntime the timed
    # one has the file's session bound, which a segmentor's graph (a copy)
    # cannot copy
    counted = count_model_macs(build_model(cfg, None, 'cpu'), scope, image)
    macs = counted['macs']
    rate, source = gemm_rate(device), 'fp32 GEMM probe'
    if floor_ms(macs, rate) > median_ms:
        rate, source = 2 * macs / (median_ms * 1e-3) / 1e9, 'the timed step'
    floor = floor_ms(macs, rate)
    share = counted['by_operator'].get('conv', 0) / max(macs, 1)
    return (
        f'- MAC floor: {macs / 1e9:.4g} GMAC (the exported network at '
        f'{image.shape[2]}x{image.shape[3]}, {share:.0%} in convolutions) '
        f'at {rate:.4g} GFLOP/s ({source}, {torch.get_num_threads()} '
        f'thread(s)) = {floor:.4g} ms; median step = '
        f'{median_ms / floor:.2f}x the floor'
    )


if __name__ == '__main__':
    run_tool(main)
