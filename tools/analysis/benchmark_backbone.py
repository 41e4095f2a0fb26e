"""Our backbones (eager, fused, compiled, onnxruntime) against timm's.

One run per model and input size measures every selected column on the
same input, after checking that each column's outputs equal the reference:

==================  ====================================================
column              what runs (all ``eval()``, under ``torch.no_grad()``)
==================  ====================================================
``eager``           our registered backbone as built
``fused``           the same after ``switch_to_deploy()`` (norm affines,
                    scales and StarReLU folded into convs;
                    ``mmmetaformer/models/core/fuse.py``)
``compiled``        ``torch.compile(eager)`` (``--compile-backend``,
                    inductor by default; one static-shape graph per size)
``fused_compiled``  ``torch.compile(fused)``
``onnx``            onnxruntime (CPU) on an ONNX export of ours (opset 17,
                    dynamic H and W; ``--onnx-model`` eager or fused)
``timm``            ``timm.create_model(name, features_only=True)``
``timm_compiled``   ``torch.compile(timm)``
==================  ====================================================

Models are ``<family>_<arch>`` (``caformer_s18``, ``poolformer_s12``,
``convmixer_768_32``). The PoolFormer v1/v2, ConvFormer and CAFormer
families exist in timm: timm's classifier is built once, its state dict
loaded strictly into timm's features model and (converted) into ours, and
every column is checked against timm eager. IdentityFormer, RandFormer and
ConvMixer (with our pyramid adapter) have no timm features model: their
timm columns are ``-`` and the columns are checked against our eager
model. A check fails when the max abs difference exceeds ``1e-4`` (eager
and fused PyTorch; ``1e-3`` for compiled graphs and onnxruntime, which
reduce in another order) times the larger of the reference's max magnitude
and 1; the tool then stops with exit status 1 before timing anything. Ours are built with
``out_norm_cfg=None`` (timm's features have no output norm).

Figures:

* latency: the median over ``--runs`` timed calls after ``--warmup``
  untimed ones; all columns of a cell run interleaved (order alternating)
  so they share the machine's load. Compilation (and the ONNX export)
  happens in the check call before that and is reported separately.
* ``--clock cpu`` times this process's CPU time (both threads summed with
  ``--threads 2``) instead of elapsed time: on a shared machine time spent
  descheduled does not count. The tool then sets ``OMP_WAIT_POLICY=PASSIVE``
  (unless set) and turns off onnxruntime's spinning, so that threads waiting
  for a descheduled sibling do not burn CPU time that would be counted.
* the MAC-bound floor: the backbone's multiply-accumulates (counted as
  ``tools/analysis/get_flops.py`` does, ``mmmetaformer.utils.complexity``)
  over the machine's fp32 GEMM rate (``2 * MACs / rate``). The rate is
  measured with the same threads and clock at the start, before each
  later model and at the end; the floors use the highest of these (the lowest
  floor), since a shared machine's rate drifts with its load. No
  implementation can beat the floor by more than its GEMMs run faster
  than a large square product. A training step is given 3x the forward
  floor (backward ~ 2x forward).
* ``train`` mode: forward and backward of the sum of all outputs (gradients
  reset to ``None`` first), ours (eager, unfused) against timm (eager);
  peak memory is the extra tensor memory of one step
  (``mmmetaformer.utils.measure.peak_step_memory``); also given for the
  eager inference columns.

* ``--amp bf16|fp16`` times every column and the training step under
  autocast (the equality checks run in fp32 first); ``--channels-last
  on|off`` sets ours' ``channels_last`` and converts timm's model and the
  input alike (``auto``: ours choose per device, timm as built).
* sizes are ``HxW`` or ``HxW@B`` (batch ``B``; default ``--batch-size``).
  On CUDA the default sizes are 224x224 in batches of 128 and 800x1216 in
  batches of 2; peak memory is ``torch.cuda.max_memory_allocated``.

The tables at the end are markdown; ``--json PATH`` also writes every
figure (times, memory, MACs, floors, ratios) for other tools.

Usage::

    python tools/analysis/benchmark_backbone.py           # everything
    python tools/analysis/benchmark_backbone.py --models caformer_s18 \\
        --sizes 512x512 --columns eager fused timm --modes eval \\
        --runs 5 --warmup 2 --threads 2 --clock cpu
    python tools/analysis/benchmark_backbone.py --device cuda --amp bf16 \\
        --columns eager fused compiled timm timm_compiled
"""
import argparse
import copy
import gc
import json
import os
import os.path as osp
import re
import sys
import tempfile
import time


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

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))

import torch  # noqa: E402

from mmmetaformer.utils.launch import LaunchError, run_tool  # noqa: E402
from mmmetaformer.utils.onnx_export import export_onnx  # noqa: E402
from mmmetaformer.utils.measure import (check_outputs,  # noqa: E402
                                        clock_function, eval_step, floor_ms,
                                        gemm_rate, machine_summary, parse_hw,
                                        peak_step_memory, prepare_device,
                                        time_steps, train_step)

DEFAULT_MODELS = ('poolformer_s12', 'poolformerv2_s12', 'convformer_s18',
                  'caformer_s18')
DEFAULT_SIZES = dict(cpu=('512x512', '800x1216'),
                     cuda=('224x224@128', '800x1216@2'))
AMP_DTYPES = dict(none=None, bf16=torch.bfloat16, fp16=torch.float16)
LAYOUTS = dict(auto=None, on=True, off=False)
MODES = ('eval', 'train')
COLUMNS = ('eager', 'fused', 'compiled', 'fused_compiled', 'onnx', 'timm',
           'timm_compiled')
TITLES = dict(eager='ours eager', fused='ours fused',
              compiled='ours compiled', fused_compiled='ours fused+compiled',
              onnx='onnxruntime', timm='timm eager',
              timm_compiled='timm compiled')
TIMM_COLUMNS = ('timm', 'timm_compiled')
# ratio columns: (ours, timm reference)
RATIOS = (('eager', 'timm'), ('fused', 'timm'),
          ('compiled', 'timm_compiled'), ('fused_compiled', 'timm_compiled'),
          ('onnx', 'timm'))
# families timm builds as features_only models
TIMM_FAMILIES = ('poolformer', 'poolformerv2', 'convformer', 'caformer')
# Outputs must agree to this, relative to max(max |reference|, 1): PyTorch's
# own kernels to 1e-4; compiled graphs and onnxruntime reduce in another
# order (onnxruntime's GroupNorm over a 800x1216 stage-1 map differs by
# ~6e-4 of the output range), so 1e-3.
REL_TOLERANCE = 1e-4
OTHER_RUNTIME_TOLERANCE = 1e-3
# A training step costs about this many forward passes of MACs.
TRAIN_MAC_FACTOR = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark our backbones (eager, fused, compiled, '
        'onnxruntime) against timm features_only models, same weights')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help='<family>_<arch> names (default: %(default)s)')
    parser.add_argument('--sizes', nargs='+', default=None,
                        help='input sizes HxW or HxW@BATCH (default: cpu '
                        f"{' '.join(DEFAULT_SIZES['cpu'])}; cuda "
                        f"{' '.join(DEFAULT_SIZES['cuda'])})")
    parser.add_argument('--columns', nargs='+', default=list(COLUMNS),
                        choices=COLUMNS, metavar='COLUMN',
                        help='inference columns, any of: '
                        f"{', '.join(COLUMNS)} (default: all)")
    parser.add_argument('--modes', nargs='+', default=list(MODES),
                        choices=MODES)
    parser.add_argument('--runs', type=int, default=5,
                        help='timed calls per cell (median reported)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed calls before timing')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'),
                        default='auto',
                        help='auto: cuda if available, else cpu')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch and onnxruntime intra-op threads '
                        '(default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument(
        '--clock', choices=('wall', 'cpu'), default='wall',
        help='wall: elapsed time (default); cpu: CPU time of this process '
        '(--device cpu only), steadier on a shared machine')
    parser.add_argument('--compile-backend', default='inductor',
                        help='torch.compile backend of the compiled columns '
                        '(default: %(default)s)')
    parser.add_argument('--onnx-model', choices=('eager', 'fused'),
                        default='fused',
                        help='which of ours is exported for the onnx column '
                        '(default: %(default)s)')
    parser.add_argument('--amp', choices=tuple(AMP_DTYPES), default='none',
                        help='time under autocast in this dtype (checks '
                        'run in fp32 first; default: %(default)s)')
    parser.add_argument('--channels-last', choices=tuple(LAYOUTS),
                        default='auto',
                        help="on/off: ours' channels_last and timm's "
                        'model and input layout; auto: ours per device, '
                        'timm as built (default: %(default)s)')
    parser.add_argument('--json', metavar='PATH',
                        help='also write every figure to this JSON file')
    return parser.parse_args(argv)


def parse_size(text, batch_size):
    """``'800x1216@2'`` -> ``(800, 1216, 2)``; no ``@``: ``batch_size``."""
    hw, _, batch = text.partition('@')
    h, w = parse_hw(hw, '--sizes entry', allow_square=True)
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise LaunchError(f"--sizes entry '{text}': the batch after @ "
                              'must be an int >= 1')
        batch_size = int(batch)
    return h, w, batch_size


def model_table():
    """``{name: (family, registered class name, arch)}`` of every arch."""
    import mmmetaformer  # noqa: F401
    from mmmetaformer.models.backbones import FAMILY_CLASSES
    from mmmetaformer.registry import MODELS
    table = {}
    for family, cls_name in FAMILY_CLASSES.items():
        for arch in MODELS.get(cls_name).arch_zoo:
            name = f"{family}_{arch.replace('/', '_')}"
            table[name] = (family, cls_name, arch)
    return table


def resolve_model(name, table=None):
    """``caformer_s18`` -> ``('caformer', 'CAFormer', 's18')``."""
    table = table or model_table()
    if name not in table:
        raise LaunchError(f"unknown model '{name}'; valid models: "
                          f"{', '.join(sorted(table))}")
    return table[name]


def has_timm(name, family):
    import timm
    return family in TIMM_FAMILIES and name in timm.list_models(name)


def build_models(name, device, channels_last=None):
    """``(ours, timm_features or None)``, same weights where timm has it.

    ``channels_last`` (``None``/``True``/``False``) is ours' argument;
    ``True``/``False`` also converts timm's parameters alike.
    """
    from mmmetaformer.checkpoint import to_native
    from mmmetaformer.registry import MODELS
    family, cls_name, arch = resolve_model(name)
    torch.manual_seed(0)
    ours = MODELS.build(dict(type=cls_name, arch=arch, out_norm_cfg=None,
                             channels_last=channels_last))
    if not has_timm(name, family):
        return ours.to(device), None
    import timm
    state_dict = timm.create_model(name, pretrained=False).state_dict()
    reference = timm.create_model(name, pretrained=False, features_only=True)
    feature_sd = {
        re.sub(r'^stages\.(\d+)\.', r'stages_\1.', k): v
        for k, v in state_dict.items() if not k.startswith('head.')
    }
    reference.load_state_dict(feature_sd, strict=True)
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
    ours.load_state_dict(
        {k: v for k, v in native.items() if k in own}, strict=True)
    reference = reference.to(device)
    if channels_last is not None:
        reference = reference.to(memory_format=torch.channels_last
                                 if channels_last else
                                 torch.contiguous_format)
    return ours.to(device), reference


class OnnxRunner:
    """An ONNX export of ``model`` run by onnxruntime on CPU.

    Exported once (opset 17, dynamic batch, H and W) and called like the
    model: ``runner(x)`` returns the outputs as tensors.
    """

    def __init__(self, model, x, threads, spin, workdir):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise LaunchError(
                "the 'onnx' column needs onnxruntime (pip install "
                "onnx onnxruntime, see requirements/tests.txt)"
                " or leave it out of --columns") from exc
        path = osp.join(workdir, 'model.onnx')
        export_onnx(model, path, x, dynamic_batch=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry(
                'session.intra_op.allow_spinning', '0')
        self.session = ort.InferenceSession(
            path, options, providers=['CPUExecutionProvider'])

    def __call__(self, x):
        outs = self.session.run(None, dict(image=x.cpu().numpy()))
        return [torch.from_numpy(o) for o in outs]


def build_runners(columns, ours, reference, x, args, workdir):
    """``{column: callable(x) -> outputs}`` for the available columns."""
    runners = {}
    fused = None
    if {'fused', 'fused_compiled'} & set(columns) or (
            'onnx' in columns and args.onnx_model == 'fused'):
        fused = copy.deepcopy(ours).switch_to_deploy()

    def compiled(model):
        return torch.compile(model, backend=args.compile_backend,
                             dynamic=False)

    for column in columns:
        if column in TIMM_COLUMNS and reference is None:
            continue
        if column == 'eager':
            runners[column] = ours
        elif column == 'fused':
            runners[column] = fused
        elif column == 'compiled':
            runners[column] = compiled(ours)
        elif column == 'fused_compiled':
            runners[column] = compiled(fused)
        elif column == 'onnx':
            source = fused if args.onnx_model == 'fused' else ours
            runners[column] = OnnxRunner(source, x, args.threads,
                                         spin=args.clock != 'cpu',
                                         workdir=workdir)
        elif column == 'timm':
            runners[column] = reference
        elif column == 'timm_compiled':
            runners[column] = compiled(reference)
    return runners


def check_columns(name, size, runners, reference_column, x, device):
    """Run every column once (compiling it) in fp32 and compare with the
    reference; returns ``{column: seconds of that first call}`` and exits
    with status 1 on a mismatch."""
    tolerances = {c: REL_TOLERANCE if c in ('eager', 'fused', 'timm') else
                  OTHER_RUNTIME_TOLERANCE for c in runners}
    first, failed = check_outputs(
        runners, reference_column, x, tolerances, device,
        report=lambda line: print(f'check {name} {size} {line}',
                                  flush=True))
    if failed:
        print(f'error: {name} {failed[0]} outputs differ from '
              f'{reference_column} at {size}; not timing', file=sys.stderr)
        sys.exit(1)
    return first


def eager_peak_mb(run, x, device, amp_dtype=None):
    """Peak extra MB of one no-grad call of an eager PyTorch module."""
    return peak_step_memory(eval_step(run, x, amp_dtype), device) / 2**20


def train_peak_mb(step, device):
    step.model.zero_grad(set_to_none=True)
    return peak_step_memory(step, device) / 2**20


def count_macs(model, size, batch_size):
    from mmmetaformer.utils.complexity import count_backbone
    return count_backbone(model, shape=size, batch_size=batch_size)['macs']


def fmt(value, digits=1):
    return '-' if value is None else f'{value:.{digits}f}'


def ratio(a, b):
    return '-' if a is None or b is None or not b else f'{a / b:.2f}'


def print_tables(columns, rows, train_rows, rate):
    """The README-ready markdown tables; ``rate`` gives the floors."""
    for row in rows + train_rows:
        row['floor'] = row['floor_factor'] * floor_ms(row['macs'], rate)
    if rows:
        print('\n**Inference**, ms per batch (eval, no_grad); floor = '
              f'MACs at the highest measured GEMM rate ({rate:.0f} '
              'GFLOP/s):\n')
        print('| model | size | checked vs | MAC floor | ' +
              ' | '.join(TITLES[c] for c in columns) + ' |')
        print('| --- | --- | --- | ---: | ' +
              ' | '.join('---:' for _ in columns) + ' |')
        for row in rows:
            print(f"| {row['model']} | {row['size']} | {row['reference']} | "
                  f"{fmt(row['floor'])} | " +
                  ' | '.join(fmt(row['ms'].get(c)) for c in columns) + ' |')
        ratios = [(a, b) for a, b in RATIOS if a in columns and b in columns]
        mem_columns = [c for c in ('eager', 'fused', 'timm') if c in columns]
        print('\n**Against timm** (time ratios; x floor = best of ours over '
              'the MAC floor) and peak inference memory, MB:\n')
        print('| model | size | ' +
              ' | '.join(f'{TITLES[a]} / {TITLES[b]}' for a, b in ratios) +
              ' | best of ours / floor | ' +
              ' | '.join(f'{TITLES[c]} MB' for c in mem_columns) + ' |')
        print('| --- | --- | ' + ' | '.join('---:' for _ in ratios) +
              ' | ---: | ' + ' | '.join('---:' for _ in mem_columns) + ' |')
        for row in rows:
            ms = row['ms']
            ours = [ms[c] for c in COLUMNS
                    if c not in TIMM_COLUMNS and ms.get(c) is not None]
            best = min(ours) if ours else None
            print(f"| {row['model']} | {row['size']} | " +
                  ' | '.join(ratio(ms.get(a), ms.get(b))
                             for a, b in ratios) +
                  f" | {ratio(best, row['floor'])} | " +
                  ' | '.join(fmt(row['mb'].get(c), 0) for c in mem_columns) +
                  ' |')
    if train_rows:
        print(f'\n**Training step** (forward + backward, eager), ms and '
              f'peak MB; floor = {TRAIN_MAC_FACTOR}x the forward MACs at '
              'the same GEMM rate:\n')
        print('| model | size | MAC floor | ours ms | timm ms | ours / timm '
              '| ours peak MB | timm peak MB | ours / timm |')
        print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
        for row in train_rows:
            ms, mb = row['ms'], row['mb']
            print(f"| {row['model']} | {row['size']} | {fmt(row['floor'])} | "
                  f'{fmt(ms[0])} | {fmt(ms[1])} | {ratio(*ms)} | '
                  f'{fmt(mb[0], 0)} | {fmt(mb[1], 0)} | {ratio(*mb)} |')


def benchmark_model(name, sizes, args, clock, device, rate, workdir):
    """Check and time every column of one model; returns table rows.

    The runners are built once per model (the ONNX export at the first
    size serves every size; compiled columns compile again for each new
    size, in the check call).
    """
    layout = LAYOUTS[args.channels_last]
    amp = AMP_DTYPES[args.amp]
    ours, reference = build_models(name, device, layout)
    reference_column = 'timm' if reference is not None else 'eager'
    runners = None
    rows, train_rows = [], []
    for h, w, batch in sizes:
        size = f'{h}x{w}' + (f'@{batch}' if batch != args.batch_size else '')
        x = torch.randn(batch, 3, h, w, device=device)
        if layout is not None:
            x = x.contiguous(memory_format=torch.channels_last
                             if layout else torch.contiguous_format)
        macs = count_macs(ours, (h, w), batch)
        print(f'{name} {size}: {macs / 1e9:.2f} GMACs, MAC floor '
              f'{floor_ms(macs, rate):.1f} ms at {rate:.1f} GFLOP/s',
              flush=True)
        if 'eval' in args.modes:
            for model in (ours, reference):
                if model is not None:
                    model.eval()
            if runners is None:
                # the reference always runs for the check; timed if chosen
                columns = list(args.columns)
                if reference_column not in columns:
                    columns.append(reference_column)
                runners = build_runners(columns, ours, reference, x, args,
                                        workdir)
            first = check_columns(name, size, runners, reference_column, x,
                                  device)
            for column in runners:
                if 'compiled' in column or column == 'onnx':
                    print(f'  {name} {size} {column}: first call (compile '
                          f'or export) {first[column]:.1f} s', flush=True)
            timed = [c for c in args.columns if c in runners]
            ms = dict(zip(timed, time_steps(
                [eval_step(runners[c], x, amp) for c in timed], device,
                args.runs, args.warmup, clock)))
            mb = {c: eager_peak_mb(runners[c], x, device, amp)
                  for c in ('eager', 'fused', 'timm') if c in timed}
            rows.append(dict(model=name, size=size, macs=macs,
                             floor_factor=1, ms=ms, mb=mb,
                             reference=TITLES[reference_column]))
            print(f'  {name} {size} eval: ' + ', '.join(
                f'{TITLES[c]} {ms[c]:.1f} ms' for c in timed), flush=True)
        if 'train' in args.modes:
            models = [ours] + ([reference] if reference is not None else [])
            steps = [train_step(m, x, amp) for m in models]
            times = time_steps(steps, device, args.runs, args.warmup, clock)
            mems = [train_peak_mb(s, device) for s in steps]
            for model in models:
                model.zero_grad(set_to_none=True)
                model.eval()
            if reference is None:
                times.append(None)
                mems.append(None)
            train_rows.append(dict(model=name, size=size, macs=macs,
                                   floor_factor=TRAIN_MAC_FACTOR, ms=times,
                                   mb=mems))
            print(f'  {name} {size} train: ours {times[0]:.1f} ms, timm '
                  f'{fmt(times[1])} ms; peak ours {mems[0]:.0f} MB, timm '
                  f'{fmt(mems[1], 0)} MB', flush=True)
        del x
    del runners, ours, reference
    torch._dynamo.reset()
    gc.collect()
    return rows, train_rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    prepare_device(args.device, args.threads)
    if args.clock == 'cpu' and args.device != 'cpu':
        raise LaunchError('--clock cpu measures CPU time; use it with '
                          '--device cpu')
    if args.amp != 'none' and 'onnx' in args.columns:
        raise LaunchError("--amp times PyTorch under autocast; leave 'onnx'"
                          ' out of --columns')
    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise LaunchError(f'--runs ({args.runs}) and --batch-size '
                          f'({args.batch_size}) must be >= 1 and --warmup '
                          f'({args.warmup}) >= 0')
    if 'onnx' in args.columns and args.device != 'cpu':
        raise LaunchError("the 'onnx' column runs onnxruntime on CPU; use "
                          "--device cpu or leave 'onnx' out of --columns")
    sizes = [parse_size(s, args.batch_size)
             for s in args.sizes or DEFAULT_SIZES[args.device]]
    columns = [c for c in COLUMNS if c in args.columns]  # table order
    args.columns = columns
    table = model_table()
    for name in args.models:
        resolve_model(name, table)
    device = args.device
    clock = clock_function(args.clock)
    import timm
    print('## Backbone benchmark: ours (eager, fused, compiled, '
          'onnxruntime) vs timm features_only, same weights')
    print(machine_summary(device, packages=('timm', )))
    rate = gemm_rate(device, clock)
    print(f'- batch {args.batch_size} (unless a size says @B), median of '
          f'{args.runs} runs after {args.warmup} warmup, {args.clock} clock, '
          f'compile backend {args.compile_backend}, onnx from ours '
          f'{args.onnx_model}, amp {args.amp}, channels-last '
          f'{args.channels_last}; fp32 GEMM rate {rate:.1f} GFLOP/s '
          '(2048^3 matmul, same threads and clock)')
    print('- command: python tools/analysis/benchmark_backbone.py ' +
          ' '.join(argv), flush=True)
    del timm

    rows, train_rows, rates = [], [], [rate]  # the start rate serves
    with tempfile.TemporaryDirectory() as workdir:  # the first model
        for i, name in enumerate(args.models):
            if i:
                rates.append(gemm_rate(device, clock))
            r, t = benchmark_model(name, sizes, args, clock, device,
                                   rates[-1], workdir)
            rows += r
            train_rows += t
    rates.append(gemm_rate(device, clock))
    measured = ', '.join(f'{r:.1f}' for r in rates)
    print(f'- GEMM rates measured (start, before each later model, end): '
          f'{measured} GFLOP/s; the floors use the highest, '
          f'{max(rates):.1f}')
    print_tables(columns, rows, train_rows, max(rates))
    if args.json:
        write_json(args.json, rows, train_rows, rates, argv)


def write_json(path, rows, train_rows, rates, argv):
    """Every figure of the tables (unrounded), with the ratios to timm."""
    def ratios(ms):
        return {f'{a}/{b}': ms[a] / ms[b] for a, b in RATIOS
                if ms.get(a) is not None and ms.get(b)}
    result = dict(
        command=['tools/analysis/benchmark_backbone.py', *argv],
        gemm_rates=rates, floor_rate=max(rates),
        inference=[dict(row, ratios=ratios(row['ms'])) for row in rows],
        training=[dict(row, ratio=(row['ms'][0] / row['ms'][1]
                                   if row['ms'][1] else None),
                       memory_ratio=(row['mb'][0] / row['mb'][1]
                                     if row['mb'][1] else None))
                  for row in train_rows])
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    run_tool(main)
