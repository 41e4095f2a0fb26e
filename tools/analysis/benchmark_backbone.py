"""Latency and peak memory of our backbones against timm's, same weights.

For each model (a timm ``timm.models.metaformer`` name such as
``caformer_s18``) the tool builds:

* timm's ``timm.create_model(name, features_only=True)`` (a
  ``FeatureListNet`` returning the four stage outputs, no output norms) -
  the project's numerical reference;
* our registered backbone (``CAFormer(arch='s18', out_norm_cfg=None)``).

Both get the same weights: timm's classifier ``create_model(name)`` is
built once and its state dict is loaded strictly into the features model
(``FeatureListNet`` names stage ``i`` ``stages_i``, so ``stages.i.`` keys
are renamed and ``head.*`` dropped) and, through
``mmmetaformer.checkpoint.to_native`` (Linear MLP weights -> 1x1 convs),
into ours; every key of ours must be present (only ``head.*`` is left
over). Before any timing, the outputs on each benchmark input are compared
(max abs diff printed); a mismatch stops the tool with exit status 1.

Modes:
    eval   ``model.eval()``, forward under ``torch.no_grad()``.
    train  ``model.train()``, forward + backward of the sum of all outputs
           (parameter gradients reset to ``None`` before each step).

Latency is the median over ``--runs`` timed steps after ``--warmup``
untimed ones. Ours and timm's steps are interleaved (alternating which
goes first), so both see the same load on a shared machine. ``--clock
cpu`` times the process's CPU time instead of elapsed time: on a machine
shared with other jobs, time spent descheduled then does not count
(use it with ``--threads 1``, where CPU time is compute time; with more
threads it also counts threads spinning at barriers).

Peak memory is the peak of the extra tensor memory one step allocates on
top of what is alive before it (weights, input): activations, saved
tensors, gradients and outputs; how it is measured on CUDA and on CPU is
in ``mmmetaformer.utils.measure.peak_step_memory``.

Usage::

    python tools/analysis/benchmark_backbone.py                 # everything
    python tools/analysis/benchmark_backbone.py --models caformer_s18 \\
        --sizes 512x512 --modes eval --runs 10 --warmup 3 --threads 2
"""
import argparse
import gc
import os.path as osp
import re
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))

import torch  # noqa: E402

from mmmetaformer.utils.launch import LaunchError, run_tool  # noqa: E402
from mmmetaformer.utils.measure import (machine_summary,  # noqa: E402
                                        parse_hw, peak_step_memory,
                                        prepare_device, synchronize)

DEFAULT_MODELS = ('poolformer_s12', 'poolformerv2_s12', 'convformer_s18',
                  'caformer_s18')
DEFAULT_SIZES = ('512x512', '800x1216')
MODES = ('eval', 'train')
# timm families with features_only support -> our registered class
TIMM_FAMILIES = dict(
    poolformer='PoolFormer',
    poolformerv2='PoolFormerV2',
    convformer='ConvFormer',
    caformer='CAFormer')
# Outputs must agree to this relative to the largest output magnitude.
REL_TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark our backbones against timm features_only '
        'models with the same weights')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help='timm metaformer names (default: %(default)s)')
    parser.add_argument('--sizes', nargs='+', default=list(DEFAULT_SIZES),
                        help='input sizes HxW (default: %(default)s)')
    parser.add_argument('--modes', nargs='+', default=list(MODES),
                        choices=MODES)
    parser.add_argument('--runs', type=int, default=5,
                        help='timed steps per cell (median reported)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed steps before timing')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int,
                        help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument(
        '--clock', choices=('wall', 'cpu'), default='wall',
        help='wall: elapsed time (default); cpu: CPU time of this process '
        '(time.process_time, --device cpu only), steadier on a shared '
        'machine, best with --threads 1')
    return parser.parse_args(argv)


def resolve_model(name):
    """``caformer_s18`` -> ``('CAFormer', 's18')``."""
    import timm
    family, _, size = name.partition('_')
    valid = [n for f in TIMM_FAMILIES for n in timm.list_models(f'{f}_*')
             if n.split('_')[0] == f]
    if family not in TIMM_FAMILIES or name not in valid:
        raise LaunchError(f"unknown model '{name}'; valid models: "
                          f"{', '.join(sorted(valid))}")
    return TIMM_FAMILIES[family], size


def build_pair(name, device):
    """``(ours, timm_features)`` with the same (random) timm weights."""
    import timm

    import mmmetaformer  # noqa: F401
    from mmmetaformer.checkpoint import to_native
    from mmmetaformer.registry import MODELS
    cls_name, arch = resolve_model(name)
    state_dict = timm.create_model(name, pretrained=False).state_dict()

    reference = timm.create_model(name, pretrained=False, features_only=True)
    feature_sd = {
        re.sub(r'^stages\.(\d+)\.', r'stages_\1.', k): v
        for k, v in state_dict.items() if not k.startswith('head.')
    }
    reference.load_state_dict(feature_sd, strict=True)

    ours = MODELS.build(dict(type=cls_name, arch=arch, out_norm_cfg=None))
    native, _, _ = to_native(state_dict, fmt='timm')
    own = ours.state_dict()
    missing = sorted(set(own) - set(native))
    unexpected = sorted(
        k for k in set(native) - set(own) if not k.startswith('head.'))
    shapes = sorted(k for k in own
                    if k in native and own[k].shape != native[k].shape)
    if missing or unexpected or shapes:
        raise RuntimeError(f'{name}: timm weights do not fit {cls_name}: '
                           f'missing {missing}, unexpected {unexpected}, '
                           f'shape mismatch {shapes}')
    ours.load_state_dict(native, strict=False)
    return ours.to(device), reference.to(device)


def max_diff(ours, reference, x):
    """``(max abs diff, max abs reference value)`` over all outputs."""
    ours.eval()
    reference.eval()
    with torch.no_grad():
        a, b = ours(x), reference(x)
    if len(a) != len(b):
        raise RuntimeError(f'{len(a)} outputs vs {len(b)} in timm')
    diff = scale = 0.0
    for u, v in zip(a, b):
        if u.shape != v.shape:
            raise RuntimeError(f'output shape {tuple(u.shape)} vs timm '
                               f'{tuple(v.shape)}')
        diff = max(diff, (u - v).abs().max().item())
        scale = max(scale, v.abs().max().item())
    return diff, scale


def make_step(model, x, mode):
    """A closure running one step of ``mode`` on ``model``."""
    if mode == 'eval':
        model.eval()

        def step():
            with torch.no_grad():
                return model(x)
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            outs = model(x)
            sum(o.sum() for o in outs).backward()
    step.model = model
    return step


def time_pair(steps, device, runs, warmup, clock=time.perf_counter):
    """Median ms of each step; the steps are interleaved, order alternating."""
    for _ in range(warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for i in range(runs):
        order = range(len(steps)) if i % 2 == 0 else reversed(
            range(len(steps)))
        for k in order:
            synchronize(device)
            start = clock()
            steps[k]()
            synchronize(device)
            times[k].append((clock() - start) * 1e3)
    return [statistics.median(t) for t in times]


def peak_memory(step, device):
    """Peak extra bytes of one ``step``, gradients freed first.

    A training step's peak then includes the parameter gradients it
    creates.
    """
    step.model.zero_grad(set_to_none=True)
    return peak_step_memory(step, device)


def _ratio(a, b):
    return f'{a / b:.2f}' if b else '-'


def main(argv=None):
    args = parse_args(argv)
    prepare_device(args.device, args.threads)
    if args.clock == 'cpu' and args.device != 'cpu':
        raise LaunchError('--clock cpu measures CPU time; use it with '
                          '--device cpu')
    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise LaunchError('--runs and --batch-size must be >= 1 and '
                          '--warmup >= 0')
    sizes = [parse_hw(s, '--sizes entry', allow_square=True)
             for s in args.sizes]
    for name in args.models:
        resolve_model(name)
    device = args.device
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    print('## Backbone benchmark: ours vs timm features_only, same weights')
    print(machine_summary(device, packages=('timm', )))
    print(f'- batch {args.batch_size}, median of {args.runs} runs after '
          f'{args.warmup} warmup, {args.clock} clock; peak = extra tensor '
          'memory of one step\n')

    rows = []
    for name in args.models:
        torch.manual_seed(0)
        ours, reference = build_pair(name, device)
        for h, w in sizes:
            x = torch.randn(args.batch_size, 3, h, w, device=device)
            diff, scale = max_diff(ours, reference, x)
            ok = diff <= REL_TOLERANCE * max(scale, 1.0)
            print(f'check {name} {h}x{w}: max abs diff ours vs timm '
                  f'{diff:.3g} (max |output| {scale:.3g}) '
                  f"{'OK' if ok else 'MISMATCH'}", flush=True)
            if not ok:
                print(f'error: {name} outputs differ from timm at {h}x{w}; '
                      'not timing', file=sys.stderr)
                sys.exit(1)
            for mode in args.modes:
                steps = [make_step(m, x, mode) for m in (ours, reference)]
                ms = time_pair(steps, device, args.runs, args.warmup,
                               clock)
                mem = [peak_memory(step, device) / 2**20 for step in steps]
                rows.append((name, f'{h}x{w}', mode, ms, mem))
                print(f'  {name} {h}x{w} {mode}: ours {ms[0]:.1f} ms, timm '
                      f'{ms[1]:.1f} ms; peak ours {mem[0]:.0f} MB, timm '
                      f'{mem[1]:.0f} MB', flush=True)
            del x
        del ours, reference
        gc.collect()

    print('\n| model | size | mode | ours ms | timm ms | ours/timm | '
          'ours peak MB | timm peak MB | ours/timm |')
    print('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for name, size, mode, ms, mem in rows:
        print(f'| {name} | {size} | {mode} | {ms[0]:.1f} | {ms[1]:.1f} | '
              f'{_ratio(*ms)} | {mem[0]:.1f} | {mem[1]:.1f} | '
              f'{_ratio(*mem)} |')


if __name__ == '__main__':
    run_tool(main)
