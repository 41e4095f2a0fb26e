"""Small helpers shared by the test modules."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_tool(script, *args, timeout=600, cwd=None, env=None):
    """Run ``tools/<script>`` with this interpreter; return the process."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
        cwd=cwd or REPO_ROOT, env=env)


BENCHMARK_HEADER = ('| config | device | images | model img/s | overall img/s '
                    '| median ms/batch | peak tensor MB | peak RSS MB |')


def benchmark_row(stdout, config_name):
    """The cells of ``tools/analysis/benchmark.py``'s row for a config.

    Checks the table header is printed and the measured figures are
    positive numbers.
    """
    assert BENCHMARK_HEADER in stdout, stdout[-3000:]
    rows = [line for line in stdout.splitlines()
            if line.startswith(f'| {config_name} |')]
    assert len(rows) == 1, stdout[-3000:]
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    assert len(cells) == 8, cells
    figures = [float(c) for c in cells[3:]]
    assert all(f > 0 for f in figures), cells
    return cells
