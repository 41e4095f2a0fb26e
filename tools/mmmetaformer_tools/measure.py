"""Timing and memory measurement shared by the benchmark tools.

``tools/analysis/benchmark_backbone.py`` (backbone against timm, its core in
``backbone_benchmark``) and ``tools/analysis/benchmark.py`` (a whole
detector or segmentor) measure the same way, so their figures are
comparable:

* time: ``synchronize`` around each timed step on CUDA, so asynchronous
  kernels are counted where they run;
* memory: ``peak_step_memory``, the peak of the extra tensor memory one
  step allocates on top of what is alive before it;
* several variants of one step are timed interleaved (``time_steps``), so
  they share whatever load a shared machine has;
* ``gemm_rate`` measures the machine's fp32 matrix-multiply rate with the
  same threads and clock, for the MAC-bound floor ``floor_ms``;
* ``eval_step`` / ``train_step`` are the timed calls (optionally under
  autocast) and ``check_outputs`` the equality check that precedes timing.
"""

import contextlib
import gc
import os
import platform
import re
import statistics
import sys
import time

import torch

from .launch import LaunchError


def parse_hw(text, option, allow_square=False):
    """``'800x1216'`` -> ``(800, 1216)``; both sides must be >= 32.

    Args:
        text (str): the command-line value.
        option (str): how to name it in the error, e.g. ``'--image-size'``.
        allow_square (bool): also accept ``'512'`` for ``512x512``.
    """
    pattern = r'(\d+)(?:x(\d+))?' if allow_square else r'(\d+)x(\d+)'
    match = re.fullmatch(pattern, text.strip().lower())
    if match:
        h = int(match.group(1))
        w = int(match.group(2) or h)
    if not match or min(h, w) < 32:
        raise LaunchError(
            f"{option} '{text}' is not HxW with both sides "
            '>= 32 (e.g. 512x512)'
        )
    return h, w


def prepare_device(device, threads=None):
    """Check a benchmark's ``--device`` and apply its ``--threads``."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise LaunchError(
            '--device cuda but CUDA is not available; use --device cpu'
        )
    if threads is not None:
        if threads < 1:
            raise LaunchError(f'--threads must be >= 1, got {threads}')
        torch.set_num_threads(threads)


def synchronize(device):
    """Wait for queued CUDA work; a no-op on CPU."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def clock_function(clock):
    """``'wall'`` -> ``time.perf_counter``; ``'cpu'`` -> ``time.process_time``.

    The CPU clock counts the time this process's threads ran, so time spent
    descheduled on a shared machine does not count; threads spinning at a
    barrier do count, so benchmark tools set ``OMP_WAIT_POLICY=PASSIVE``
    with it (before torch is imported: OpenMP reads it when it loads).
    """
    clocks = dict(wall=time.perf_counter, cpu=time.process_time)
    if clock not in clocks:
        raise LaunchError(f"clock '{clock}' is unknown; valid: wall, cpu")
    return clocks[clock]


def time_steps(steps, device, runs, warmup, clock=time.perf_counter):
    """Median milliseconds of each step; the steps run interleaved.

    Each run calls every step once, the order reversed on odd runs, so all
    steps see the same load (and the same cache state on average).
    """
    for _ in range(warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for i in range(runs):
        order = (
            range(len(steps)) if i % 2 == 0 else reversed(range(len(steps)))
        )
        for k in order:
            synchronize(device)
            start = clock()
            steps[k]()
            synchronize(device)
            times[k].append((clock() - start) * 1e3)
    return [statistics.median(t) for t in times]


def gemm_rate(device, clock=time.perf_counter, size=2048, runs=5):
    """fp32 ``size^3`` matrix-multiply rate in GFLOP/s (2 FLOP per MAC).

    The median of ``runs`` products after one untimed, with torch's current
    threads and the given clock (with the CPU clock: FLOP per CPU-second
    of all threads together, the unit CPU-time figures are in).
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    ms = time_steps([lambda: a @ b], device, runs, 1, clock)[0]
    return 2 * size**3 / (ms * 1e-3) / 1e9


def floor_ms(macs, rate_gflops):
    """Milliseconds ``macs`` multiply-accumulates take at the GEMM rate."""
    return 2 * macs / (rate_gflops * 1e9) * 1e3


def max_abs_diff(outputs, reference):
    """``(max |a - b|, max |b|)`` over matching tensors of two sequences.

    Raises:
        ValueError: different numbers of tensors or shapes.
    """
    outputs, reference = list(outputs), list(reference)
    if len(outputs) != len(reference):
        raise ValueError(
            f'{len(outputs)} outputs vs {len(reference)} in the reference'
        )
    diff = scale = 0.0
    for a, b in zip(outputs, reference):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape != b.shape:
            raise ValueError(
                f'output shape {tuple(a.shape)} vs reference {tuple(b.shape)}'
            )
        diff = max(diff, (a.float() - b.float()).abs().max().item())
        scale = max(scale, b.abs().max().item())
    return diff, scale


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 goes to /dev/null inside the block.

    torch's profiler (kineto) writes status lines from C++ straight to the
    process's stderr at every start (``USDT ... profiler_start``,
    ``gpuGetDeviceCount failed`` on machines without a GPU), which no
    Python setting turns off; a benchmark prints figures, not those.
    Python exceptions raised inside still propagate.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_memory(step, device):
    """Peak extra bytes one call of ``step()`` allocates.

    On CUDA this is ``torch.cuda.max_memory_allocated()`` after
    ``reset_peak_memory_stats``, minus ``memory_allocated()`` before the
    step. On CPU the process RSS is a poor measure (glibc keeps freed
    memory and ``ru_maxrss`` cannot be reset), so the step runs under
    ``torch.profiler.profile(profile_memory=True)``: its allocation events
    (every CPU tensor allocation and free through PyTorch's allocator),
    accumulated in time order, have the same running maximum CUDA reports.
    Scratch memory oneDNN or BLAS allocate outside PyTorch is not seen.
    """
    gc.collect()
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(
            activities=[ProfilerActivity.CPU], profile_memory=True
        ) as prof,
    ):
        step()
    events = sorted(
        (e.start_ns(), i, e.nbytes())
        for i, e in enumerate(prof.profiler.kineto_results.events())
        if e.name() == '[memory]' and e.device_type().name == 'CPU'
    )
    current = peak = 0
    for _, _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def machine_summary(device, packages=()):
    """Markdown bullet lines naming the CPU, threads, versions and device.

    Args:
        device (str): ``'cpu'`` or a CUDA device.
        packages (Sequence[str]): extra importable packages whose
            ``__version__`` is listed next to torch's.
    """
    import importlib

    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    versions = [f'torch {torch.__version__}']
    versions += [
        f'{name} {importlib.import_module(name).__version__}'
        for name in packages
    ]
    versions.append(f'Python {platform.python_version()}')
    wait = os.environ.get('OMP_WAIT_POLICY')
    lines = [
        f'- CPU: {cpu}',
        f'- torch threads: {torch.get_num_threads()}'
        + (f' (OMP_WAIT_POLICY={wait})' if wait else ''),
        '- ' + ', '.join(versions),
        '- device: '
        + (
            torch.cuda.get_device_name()
            if str(device).startswith('cuda')
            else 'cpu'
        ),
    ]
    return '\n'.join(lines)


def autocast(device, dtype):
    """``torch.autocast`` for ``dtype`` (``None``: a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def eval_step(run, x, amp_dtype=None):
    """``step()``: one no-grad call of ``run`` on ``x``."""

    def step():
        with torch.no_grad(), autocast(x.device, amp_dtype):
            return run(x)

    return step


def train_step(model, x, amp_dtype=None):
    """``step()``: forward and backward of the sum of all outputs
    (gradients reset to ``None`` first); ``step.model`` is ``model``."""
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(x.device, amp_dtype):
            outs = model(x)
        sum(o.float().sum() for o in outs).backward()

    step.model = model
    return step


def check_outputs(runners, reference, x, tolerances, device, report=print):
    """Run every runner once on ``x`` and compare with ``reference``'s.

    Args:
        runners (dict): ``{name: callable(x) -> outputs}``.
        reference (str): the key whose outputs are the reference.
        tolerances (dict): ``{name: relative tolerance}``: a runner passes
            when its max abs difference is at most the tolerance times
            ``max(max |reference|, 1)``.

    Returns:
        tuple: ``(first-call seconds by name, names that failed)``.
    """
    first, outputs, failed = {}, {}, []
    with torch.no_grad():
        for name, run in runners.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = run(x)
            synchronize(device)
            first[name] = time.perf_counter() - start
    for name, outs in outputs.items():
        if name == reference:
            continue
        diff, scale = max_abs_diff(outs, outputs[reference])
        ok = diff <= tolerances[name] * max(scale, 1.0)
        report(
            f'{name} vs {reference}: max abs diff {diff:.3g} (max '
            f'|output| {scale:.3g}) {"OK" if ok else "MISMATCH"}'
        )
        if not ok:
            failed.append(name)
    return first, failed
