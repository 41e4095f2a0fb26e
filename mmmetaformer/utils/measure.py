"""Timing and memory measurement shared by the benchmark tools.

``tools/analysis/benchmark_backbone.py`` (backbone against timm) and
``tools/analysis/benchmark.py`` (a whole detector or segmentor) measure the
same way, so their figures are comparable:

* time: ``synchronize`` around each timed step on CUDA, so asynchronous
  kernels are counted where they run;
* memory: ``peak_step_memory``, the peak of the extra tensor memory one
  step allocates on top of what is alive before it.
"""
import gc
import platform
import re

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
        raise LaunchError(f"{option} '{text}' is not HxW with both sides "
                          '>= 32 (e.g. 512x512)')
    return h, w


def prepare_device(device, threads=None):
    """Check a benchmark's ``--device`` and apply its ``--threads``."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise LaunchError('--device cuda but CUDA is not available; use '
                          '--device cpu')
    if threads is not None:
        if threads < 1:
            raise LaunchError(f'--threads must be >= 1, got {threads}')
        torch.set_num_threads(threads)


def synchronize(device):
    """Wait for queued CUDA work; a no-op on CPU."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


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
    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), i, e.nbytes())
        for i, e in enumerate(prof.profiler.kineto_results.events())
        if e.name() == '[memory]' and e.device_type().name == 'CPU')
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
    versions += [f'{name} {importlib.import_module(name).__version__}'
                 for name in packages]
    versions.append(f'Python {platform.python_version()}')
    lines = [
        f'- CPU: {cpu}',
        f'- torch threads: {torch.get_num_threads()}',
        '- ' + ', '.join(versions),
        '- device: ' + (torch.cuda.get_device_name()
                        if str(device).startswith('cuda') else 'cpu'),
    ]
    return '\n'.join(lines)
