"""Our backbones (eager, fused, compiled, onnxruntime) against timm's.

Prints, per model and input size, the latency of every selected column
(after checking that its outputs equal the reference's), the ratios of
ours to timm's, the MAC-bound floor at the machine's measured fp32 GEMM
rate, peak memory, and the same for a training step; the tables at the end
are markdown and ``--json PATH`` also writes every figure. The measuring
core, with what each column runs and how each figure is measured, is
``tools/mmmetaformer_tools/backbone_benchmark.py``; this tool parses the
options and prints. A column whose outputs differ from the reference stops the
tool with exit status 1 before anything of that model is timed.

``--clock cpu`` times this process's CPU time (all threads summed) instead
of elapsed time: on a shared machine time spent descheduled does not
count. The tool then sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before
torch is imported, so that waiting threads do not spin.

Usage::

    python tools/analysis/benchmark_backbone.py           # everything
    python tools/analysis/benchmark_backbone.py --models caformer_s18 \\
        --sizes 512x512 --columns eager fused timm --modes eval \\
        --runs 5 --warmup 2 --threads 2 --clock cpu
    python tools/analysis/benchmark_backbone.py --device cuda --amp bf16 \\
        --columns eager fused compiled timm timm_compiled
"""

import argparse
import dataclasses
import json
import os
import os.path as osp
import sys


def passive_wait_env(argv):
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if ``argv`` asks for ``--clock cpu``.

    OpenMP threads (torch's, oneDNN's, inductor's) otherwise spin while they
    wait for a descheduled sibling, which a CPU-time clock counts as work:
    measured with 2 threads on a loaded 2-core machine, spinning made a
    0.9 s (CPU) forward read 3.5 s. OpenMP reads the variable when it
    loads, so this runs before anything imports torch; an existing setting
    is kept.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--clock')
    known, _ = parser.parse_known_args(argv)
    if known.clock == 'cpu':
        os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


if __name__ == '__main__':
    passive_wait_env(sys.argv[1:])

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools import backbone_benchmark as bench
from mmmetaformer_tools.backbone_runners import model_table, resolve_model
from mmmetaformer_tools.launch import run_tool
from mmmetaformer_tools.measure import (
    clock_function,
    gemm_rate,
    machine_summary,
    prepare_device,
)

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark our backbones (eager, fused, compiled, '
        'onnxruntime) against timm features_only models, same weights'
    )
    parser.add_argument(
        '--models',
        nargs='+',
        default=list(bench.DEFAULT_MODELS),
        help='<family>_<arch> names (default: %(default)s)',
    )
    parser.add_argument(
        '--sizes',
        nargs='+',
        default=None,
        help='input sizes HxW or HxW@BATCH (default: cpu '
        f'{" ".join(bench.DEFAULT_SIZES["cpu"])}; cuda '
        f'{" ".join(bench.DEFAULT_SIZES["cuda"])})',
    )
    parser.add_argument(
        '--columns',
        nargs='+',
        default=list(bench.COLUMNS),
        choices=bench.COLUMNS,
        metavar='COLUMN',
        help='inference columns, any of: '
        f'{", ".join(bench.COLUMNS)} (default: all)',
    )
    parser.add_argument(
        '--modes', nargs='+', default=list(bench.MODES), choices=bench.MODES
    )
    parser.add_argument(
        '--runs',
        type=int,
        default=5,
        help='timed calls per cell (median reported)',
    )
    parser.add_argument(
        '--warmup', type=int, default=2, help='untimed calls before timing'
    )
    parser.add_argument(
        '--device',
        choices=('auto', 'cpu', 'cuda'),
        default='auto',
        help='auto: cuda if available, else cpu',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='torch and onnxruntime intra-op threads (default: %(default)s)',
    )
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument(
        '--clock',
        choices=('wall', 'cpu'),
        default='wall',
        help='wall: elapsed time (default); cpu: CPU time of this process '
        '(--device cpu only), steadier on a shared machine',
    )
    parser.add_argument(
        '--compile-backend',
        default='inductor',
        help='torch.compile backend of the compiled columns '
        '(default: %(default)s)',
    )
    parser.add_argument(
        '--onnx-model',
        choices=('eager', 'fused'),
        default='fused',
        help='which of ours is exported for the onnx column '
        '(default: %(default)s)',
    )
    parser.add_argument(
        '--amp',
        choices=tuple(bench.AMP_DTYPES),
        default='none',
        help='time under autocast in this dtype (checks '
        'run in fp32 first; default: %(default)s)',
    )
    parser.add_argument(
        '--channels-last',
        choices=tuple(bench.LAYOUTS),
        default='auto',
        help="on/off: ours' channels_last and timm's "
        'model and input layout; auto: ours per device, '
        'timm as built (default: %(default)s)',
    )
    parser.add_argument(
        '--json',
        metavar='PATH',
        help='also write every figure to this JSON file',
    )
    return parser.parse_args(argv)


def log(line):
    print(line, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    prepare_device(args.device, args.threads)
    settings = bench.Settings(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(bench.Settings)
        }
    )
    sizes = [
        bench.parse_size(s, args.batch_size)
        for s in args.sizes or bench.DEFAULT_SIZES[args.device]
    ]
    table = model_table()
    for name in args.models:
        resolve_model(name, table)
    clock = clock_function(args.clock)

    print(
        '## Backbone benchmark: ours (eager, fused, compiled, '
        'onnxruntime) vs timm features_only, same weights'
    )
    print(machine_summary(args.device, packages=('timm',)))
    rate = gemm_rate(args.device, clock)
    print(
        f'- batch {args.batch_size} (unless a size says @B), median of '
        f'{args.runs} runs after {args.warmup} warmup, {args.clock} clock, '
        f'compile backend {args.compile_backend}, onnx from ours '
        f'{args.onnx_model}, amp {args.amp}, channels-last '
        f'{args.channels_last}; fp32 GEMM rate {rate:.1f} GFLOP/s '
        '(2048^3 matmul, same threads and clock)'
    )
    print(
        '- command: python tools/analysis/benchmark_backbone.py '
        + ' '.join(argv),
        flush=True,
    )
    try:
        rows, train_rows, rates = bench.benchmark_models(
            args.models, sizes, settings, clock, rate, log
        )
    except bench.OutputMismatch as exc:
        print(f'error: {exc}', file=sys.stderr)
        sys.exit(1)
    result = bench.figures(
        rows,
        train_rows,
        rates,
        ['tools/analysis/benchmark_backbone.py', *argv],
    )
    print(
        '- GEMM rates measured (start, before each later model, end): '
        + ', '.join(f'{r:.1f}' for r in rates)
        + f' GFLOP/s; the floors use the highest rate measured, '
        f'{result["floor_rate"]:.1f} (by {result["floor_rate_from"]})'
    )
    print(bench.format_tables(settings.columns, result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    run_tool(main)
