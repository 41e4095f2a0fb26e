"""Our backbones (eager, fused, compiled, onnxruntime) against timm's.

The measuring core of ``tools/analysis/benchmark_backbone.py``, which only
parses its arguments and prints what this module measures. One run per
model and input size measures every selected column on the same input,
after checking that each column's outputs equal the reference. What each
column runs, and how ours and timm's models get the same weights, is
``backbone_runners``. The PoolFormer v1/v2, ConvFormer and CAFormer
columns are checked against timm eager; IdentityFormer, RandFormer and
ConvMixer, which timm has no features model of, against our eager model
(their timm columns are ``-``). A check fails when the max abs difference
exceeds ``1e-4`` (eager and fused PyTorch; ``1e-3`` for compiled graphs and
onnxruntime, which reduce in another order) times the larger of the
reference's max magnitude and 1 (``OutputMismatch``: nothing of that model
is timed).

Figures:

* latency: the median over ``runs`` timed calls after ``warmup`` untimed
  ones; all columns of a cell run interleaved (order alternating) so they
  share the machine's load. Compilation (and the ONNX export) happens in
  the check call before that and is reported separately.
* the ``cpu`` clock times this process's CPU time (all threads summed)
  instead of elapsed time; onnxruntime's spinning is then turned off, so
  that threads waiting for a descheduled sibling do not burn CPU time that
  would be counted (the tool sets ``OMP_WAIT_POLICY=PASSIVE`` for the same
  reason before torch is imported).
* the MAC-bound floor: the backbone's multiply-accumulates (counted as
  ``tools/analysis/get_flops.py`` does, ``mmmetaformer_tools.complexity``)
  over the machine's fp32 GEMM rate (``2 * MACs / rate``). The rate is
  measured with the same threads and clock at the start, before each
  later model and at the end. A square product need not reach the CPU's
  peak (another vector unit, another BLAS blocking: on AMD EPYC machines
  oneDNN's convolutions ran faster than torch's 2048^3 GEMM), so the rate
  is also taken from every timed cell itself (its MACs over its time):
  the floors use the highest of all these rates, so a floor is never
  above a measured time. A training step is given 3x the forward floor
  (backward ~ 2x forward).
* ``train`` mode: forward and backward of the sum of all outputs (gradients
  reset to ``None`` first), ours (eager, unfused) against timm (eager), on
  copies of the models (BatchNorm statistics the steps update stay there);
  peak memory is the extra tensor memory of one step
  (``mmmetaformer_tools.measure.peak_step_memory``); also given for the
  eager inference columns.
* ``amp`` ``bf16``/``fp16`` times every column and the training step under
  autocast (the equality checks run in fp32 first); ``channels_last``
  ``on``/``off`` sets ours' ``channels_last`` and converts timm's model and
  the input alike (``auto``: ours choose per device, timm as built).
* sizes are ``HxW`` or ``HxW@B`` (batch ``B``; default ``batch_size``). On
  CUDA the default sizes are 224x224 in batches of 128 and 800x1216 in
  batches of 2; peak memory is ``torch.cuda.max_memory_allocated``.

``figures`` gathers every figure (times, memory, MACs, floors, ratios to
timm) and ``format_tables`` writes them as markdown tables.
"""

import copy
import dataclasses
import gc
import tempfile

import torch

from .backbone_runners import (
    COLUMNS,
    TIMM_COLUMNS,
    build_models,
    build_runners,
)
from .launch import LaunchError
from .measure import (
    check_outputs,
    eval_step,
    floor_ms,
    gemm_rate,
    parse_hw,
    peak_step_memory,
    time_steps,
    train_step,
)

DEFAULT_MODELS = (
    'poolformer_s12',
    'poolformerv2_s12',
    'convformer_s18',
    'caformer_s18',
)
DEFAULT_SIZES = dict(
    cpu=('512x512', '800x1216'), cuda=('224x224@128', '800x1216@2')
)
AMP_DTYPES = dict(none=None, bf16=torch.bfloat16, fp16=torch.float16)
LAYOUTS = dict(auto=None, on=True, off=False)
MODES = ('eval', 'train')
TITLES = dict(
    eager='ours eager',
    fused='ours fused',
    compiled='ours compiled',
    fused_compiled='ours fused+compiled',
    onnx='onnxruntime',
    timm='timm eager',
    timm_compiled='timm compiled',
)
# ratio columns: (ours, timm reference)
RATIOS = (
    ('eager', 'timm'),
    ('fused', 'timm'),
    ('compiled', 'timm_compiled'),
    ('fused_compiled', 'timm_compiled'),
    ('onnx', 'timm'),
)
MEMORY_COLUMNS = ('eager', 'fused', 'timm')  # eager PyTorch modules
# Outputs must agree to this, relative to max(max |reference|, 1): PyTorch's
# own kernels to 1e-4; compiled graphs and onnxruntime reduce in another
# order (onnxruntime's GroupNorm over a 800x1216 stage-1 map differs by
# ~6e-4 of the output range), so 1e-3.
REL_TOLERANCE = 1e-4
OTHER_RUNTIME_TOLERANCE = 1e-3
# A training step costs about this many forward passes of MACs.
TRAIN_MAC_FACTOR = 3


class OutputMismatch(RuntimeError):
    """A column's outputs differ from the reference's beyond its tolerance;
    the tool reports it and exits with status 1 before timing."""


@dataclasses.dataclass
class Settings:
    """How to measure; the fields are the tool's options of the same name.

    The columns and modes are kept in table order. Combinations that cannot
    be measured raise ``LaunchError``.
    """

    device: str = 'cpu'
    columns: tuple = COLUMNS
    modes: tuple = MODES
    runs: int = 5
    warmup: int = 2
    threads: int = 2
    batch_size: int = 1
    clock: str = 'wall'
    compile_backend: str = 'inductor'
    onnx_model: str = 'fused'
    amp: str = 'none'
    channels_last: str = 'auto'

    def __post_init__(self):
        self.columns = tuple(c for c in COLUMNS if c in self.columns)
        self.modes = tuple(m for m in MODES if m in self.modes)
        if self.clock == 'cpu' and self.device != 'cpu':
            raise LaunchError(
                '--clock cpu measures CPU time; use it with --device cpu'
            )
        if self.amp != 'none' and 'onnx' in self.columns:
            raise LaunchError(
                '--amp times PyTorch under autocast; leave '
                "'onnx' out of --columns"
            )
        if self.runs < 1 or self.warmup < 0 or self.batch_size < 1:
            raise LaunchError(
                f'--runs ({self.runs}) and --batch-size '
                f'({self.batch_size}) must be >= 1 and '
                f'--warmup ({self.warmup}) >= 0'
            )
        if 'onnx' in self.columns and self.device != 'cpu':
            raise LaunchError(
                "the 'onnx' column runs onnxruntime on CPU; "
                "use --device cpu or leave 'onnx' out of "
                '--columns'
            )

    def size_label(self, h, w, batch):
        """``'64x96'``, with ``@B`` when the batch is not the default."""
        return f'{h}x{w}' + (f'@{batch}' if batch != self.batch_size else '')


def parse_size(text, batch_size):
    """``'800x1216@2'`` -> ``(800, 1216, 2)``; no ``@``: ``batch_size``."""
    hw, _, batch = text.partition('@')
    h, w = parse_hw(hw, '--sizes entry', allow_square=True)
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise LaunchError(
                f"--sizes entry '{text}': the batch after @ "
                'must be an int >= 1'
            )
        batch_size = int(batch)
    return h, w, batch_size


def check_columns(name, size, runners, reference_column, x, device, log=print):
    """Run every column once (compiling it) in fp32 and compare with the
    reference, logging one line per column; returns ``{column: seconds of
    that first call}``.

    Raises:
        OutputMismatch: a column's outputs differ beyond its tolerance.
    """
    tolerances = {
        c: REL_TOLERANCE
        if c in ('eager', 'fused', 'timm')
        else OTHER_RUNTIME_TOLERANCE
        for c in runners
    }
    first, failed = check_outputs(
        runners,
        reference_column,
        x,
        tolerances,
        device,
        report=lambda line: log(f'check {name} {size} {line}'),
    )
    if failed:
        raise OutputMismatch(
            f'{name} {failed[0]} outputs differ from '
            f'{reference_column} at {size}; not timing'
        )
    return first


def eager_peak_mb(run, x, device, amp_dtype=None):
    """Peak extra MB of one no-grad call of an eager PyTorch module."""
    return peak_step_memory(eval_step(run, x, amp_dtype), device) / 2**20


def train_peak_mb(step, device):
    step.model.zero_grad(set_to_none=True)
    return peak_step_memory(step, device) / 2**20


def count_macs(model, size, batch_size):
    from mmmetaformer_tools.complexity import count_backbone

    return count_backbone(model, shape=size, batch_size=batch_size)['macs']


def benchmark_model(name, sizes, settings, clock, rate, workdir, log=print):
    """Check and time every column of one model; returns table rows
    ``(inference rows, training rows)``.

    The runners are built once per model (the ONNX export at the first
    size serves every size; compiled columns compile again for each new
    size, in the check call).
    """
    device, amp = settings.device, AMP_DTYPES[settings.amp]
    layout = LAYOUTS[settings.channels_last]
    ours, reference = build_models(name, device, layout)
    reference_column = 'timm' if reference is not None else 'eager'
    runners = None
    rows, train_rows = [], []
    for h, w, batch in sizes:
        size = settings.size_label(h, w, batch)
        x = torch.randn(batch, 3, h, w, device=device)
        if layout is not None:
            x = x.contiguous(
                memory_format=torch.channels_last
                if layout
                else torch.contiguous_format
            )
        macs = count_macs(ours, (h, w), batch)
        log(
            f'{name} {size}: {macs / 1e9:.2f} GMACs, MAC floor '
            f'{floor_ms(macs, rate):.1f} ms at {rate:.1f} GFLOP/s'
        )
        if 'eval' in settings.modes:
            for model in (ours, reference):
                if model is not None:
                    model.eval()
            if runners is None:
                # the reference always runs for the check; timed if chosen
                columns = list(settings.columns)
                if reference_column not in columns:
                    columns.append(reference_column)
                runners = build_runners(
                    columns, ours, reference, x, settings, workdir
                )
            first = check_columns(
                name, size, runners, reference_column, x, device, log
            )
            for column in runners:
                if 'compiled' in column or column == 'onnx':
                    log(
                        f'  {name} {size} {column}: first call (compile '
                        f'or export) {first[column]:.1f} s'
                    )
            timed = [c for c in settings.columns if c in runners]
            ms = dict(
                zip(
                    timed,
                    time_steps(
                        [eval_step(runners[c], x, amp) for c in timed],
                        device,
                        settings.runs,
                        settings.warmup,
                        clock,
                    ),
                )
            )
            mb = {
                c: eager_peak_mb(runners[c], x, device, amp)
                for c in MEMORY_COLUMNS
                if c in timed
            }
            rows.append(
                dict(
                    model=name,
                    size=size,
                    macs=macs,
                    floor_factor=1,
                    ms=ms,
                    mb=mb,
                    reference=TITLES[reference_column],
                )
            )
            log(
                f'  {name} {size} eval: '
                + ', '.join(f'{TITLES[c]} {ms[c]:.1f} ms' for c in timed)
            )
        if 'train' in settings.modes:
            # On copies: the steps update BatchNorm's running statistics,
            # which the inference columns of the next size must not see
            # (the fused and onnx ones keep those of the first size).
            models = [
                copy.deepcopy(m) for m in (ours, reference) if m is not None
            ]
            steps = [train_step(m, x, amp) for m in models]
            times = time_steps(
                steps, device, settings.runs, settings.warmup, clock
            )
            mems = [train_peak_mb(s, device) for s in steps]
            del steps, models
            if reference is None:
                times.append(None)
                mems.append(None)
            train_rows.append(
                dict(
                    model=name,
                    size=size,
                    macs=macs,
                    floor_factor=TRAIN_MAC_FACTOR,
                    ms=times,
                    mb=mems,
                )
            )
            log(
                f'  {name} {size} train: ours {times[0]:.1f} ms, timm '
                f'{fmt(times[1])} ms; peak ours {mems[0]:.0f} MB, timm '
                f'{fmt(mems[1], 0)} MB'
            )
        del x
    del runners, ours, reference
    torch._dynamo.reset()
    gc.collect()
    return rows, train_rows


def benchmark_models(names, sizes, settings, clock, first_rate, log=print):
    """``benchmark_model`` for each model in turn, the GEMM rate measured
    again before each later model and at the end.

    Returns:
        tuple: ``(inference rows, training rows, rates)``; ``rates`` starts
        with ``first_rate`` (which serves the first model).
    """
    rows, train_rows, rates = [], [], [first_rate]
    with tempfile.TemporaryDirectory() as workdir:
        for i, name in enumerate(names):
            if i:
                rates.append(gemm_rate(settings.device, clock))
            r, t = benchmark_model(
                name, sizes, settings, clock, rates[-1], workdir, log
            )
            rows += r
            train_rows += t
    rates.append(gemm_rate(settings.device, clock))
    return rows, train_rows, rates


def achieved_rates(rows):
    """GFLOP/s each timed cell reached: ``2 * floor_factor * MACs`` over
    its time."""
    for row in rows:
        times = (
            row['ms'].values() if isinstance(row['ms'], dict) else row['ms']
        )
        for ms in times:
            if ms:
                yield 2 * row['floor_factor'] * row['macs'] / (ms * 1e6)


def figures(rows, train_rows, rates, command=()):
    """Every figure of the tables (unrounded): the rows with their MAC
    floors at the highest rate measured (GEMM probes or timed cells) and
    their ratios to timm."""
    probe = max(rates)
    rate = max([probe, *achieved_rates(rows), *achieved_rates(train_rows)])

    def ratios(ms):
        return {
            f'{a}/{b}': ms[a] / ms[b]
            for a, b in RATIOS
            if ms.get(a) is not None and ms.get(b)
        }

    def with_floor(row):
        return dict(
            row, floor=row['floor_factor'] * floor_ms(row['macs'], rate)
        )

    return dict(
        command=list(command),
        gemm_rates=list(rates),
        floor_rate=rate,
        floor_rate_from='GEMM probe' if rate == probe else 'a timed cell',
        inference=[
            dict(with_floor(row), ratios=ratios(row['ms'])) for row in rows
        ],
        training=[
            dict(
                with_floor(row),
                ratio=(row['ms'][0] / row['ms'][1] if row['ms'][1] else None),
                memory_ratio=(
                    row['mb'][0] / row['mb'][1] if row['mb'][1] else None
                ),
            )
            for row in train_rows
        ],
    )


def fmt(value, digits=1):
    return '-' if value is None else f'{value:.{digits}f}'


def ratio(a, b):
    return '-' if a is None or b is None or not b else f'{a / b:.2f}'


def format_tables(columns, result):
    """The README-ready markdown tables of ``figures(...)``'s ``result``."""
    lines = []
    rows, train_rows = result['inference'], result['training']
    if rows:
        lines += [
            '',
            '**Inference**, ms per batch (eval, no_grad); floor = MACs '
            'at the highest rate measured '
            f'({result["floor_rate"]:.0f} GFLOP/s, by '
            f'{result.get("floor_rate_from", "GEMM probe")}):',
            '',
            '| model | size | checked vs | MAC floor | '
            + ' | '.join(TITLES[c] for c in columns)
            + ' |',
            '| --- | --- | --- | ---: | '
            + ' | '.join('---:' for _ in columns)
            + ' |',
        ]
        lines += [
            f'| {row["model"]} | {row["size"]} | {row["reference"]} | '
            f'{fmt(row["floor"])} | '
            + ' | '.join(fmt(row['ms'].get(c)) for c in columns)
            + ' |'
            for row in rows
        ]
        ratios = [(a, b) for a, b in RATIOS if a in columns and b in columns]
        mem_columns = [c for c in MEMORY_COLUMNS if c in columns]
        lines += [
            '',
            '**Against timm** (time ratios; x floor = best of ours over '
            'the MAC floor) and peak inference memory, MB:',
            '',
            '| model | size | '
            + ' | '.join(f'{TITLES[a]} / {TITLES[b]}' for a, b in ratios)
            + ' | best of ours / floor | '
            + ' | '.join(f'{TITLES[c]} MB' for c in mem_columns)
            + ' |',
            '| --- | --- | '
            + ' | '.join('---:' for _ in ratios)
            + ' | ---: | '
            + ' | '.join('---:' for _ in mem_columns)
            + ' |',
        ]
        for row in rows:
            ms = row['ms']
            ours = [
                ms[c]
                for c in COLUMNS
                if c not in TIMM_COLUMNS and ms.get(c) is not None
            ]
            best = min(ours) if ours else None
            lines.append(
                f'| {row["model"]} | {row["size"]} | '
                + ' | '.join(ratio(ms.get(a), ms.get(b)) for a, b in ratios)
                + f' | {ratio(best, row["floor"])} | '
                + ' | '.join(fmt(row['mb'].get(c), 0) for c in mem_columns)
                + ' |'
            )
    if train_rows:
        lines += [
            '',
            '**Training step** (forward + backward, eager), ms and peak '
            f'MB; floor = {TRAIN_MAC_FACTOR}x the forward MACs at the same '
            'GEMM rate:',
            '',
            '| model | size | MAC floor | ours ms | timm ms | ours / timm '
            '| ours peak MB | timm peak MB | ours / timm |',
            '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
        ]
        for row in train_rows:
            ms, mb = row['ms'], row['mb']
            lines.append(
                f'| {row["model"]} | {row["size"]} | {fmt(row["floor"])} | '
                f'{fmt(ms[0])} | {fmt(ms[1])} | {ratio(*ms)} | '
                f'{fmt(mb[0], 0)} | {fmt(mb[1], 0)} | {ratio(*mb)} |'
            )
    return '\n'.join(lines)
