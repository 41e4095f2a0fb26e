"""``tools/analysis/benchmark_backbone.py`` runs end to end at a tiny size."""
from .helpers import run_tool


def test_benchmark_prints_table_after_parity_check():
    proc = run_tool('analysis/benchmark_backbone.py', '--models',
                    'poolformer_s12', '--sizes', '64x64', '--runs', '1',
                    '--warmup', '0', '--modes', 'eval', '--threads', '1',
                    timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'check poolformer_s12 64x64: max abs diff ours vs timm' in out
    assert 'OK' in out and 'MISMATCH' not in out
    header = ('| model | size | mode | ours ms | timm ms | ours/timm | '
              'ours peak MB | timm peak MB | ours/timm |')
    assert header in out
    rows = [line for line in out.splitlines()
            if line.startswith('| poolformer_s12 | 64x64 | eval |')]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    assert len(cells) == 9
    float(cells[5])  # time ratio
    float(cells[8])  # memory ratio
    assert '- torch threads: 1' in out


def test_unknown_model_is_a_clear_error():
    proc = run_tool('analysis/benchmark_backbone.py', '--models',
                    'caformer_s19', timeout=120)
    assert proc.returncode == 2
    assert "error: unknown model 'caformer_s19'" in proc.stderr
    assert 'caformer_s18' in proc.stderr and 'Traceback' not in proc.stderr
