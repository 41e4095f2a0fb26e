"""The benchmark tools run end to end at a tiny size and reject bad input.

``benchmark_backbone.py`` (ours against timm) and ``benchmark.py`` (a whole
config); the dataset-fed runs of ``benchmark.py`` with a trained checkpoint
are in the detection and segmentation config tests, next to the toy runs
that make the checkpoints.
"""

import json
import re
import subprocess
import sys

from mmmetaformer_tools import backbone_benchmark as bench

import pytest
import torch

from .helpers import REPO_ROOT, benchmark_row, load_tool, run_tool


def load_backbone_tool():
    """``tools/analysis/benchmark_backbone.py`` as a module (no subprocess)."""
    return load_tool('analysis/benchmark_backbone.py')


# The backbone benchmark on a tiny PoolFormer (timm has it: checked against
# timm's) and a tiny IdentityFormer (timm has not: checked against ours),
# registered under these names in the tool's process only: each is
# exported to ONNX, ~45 MB a model at S12, under 1 MB here. timm's is
# ``tiny_timm_metaformer``: timm's MetaFormer with poolformer_s12's other
# arguments; ours the S12 arch at the same depths and dims.
POOL, IDENT = 'poolformer_tiny', 'identityformer_tiny'
WITH_TINY_MODELS = """
import runpy, sys
sys.path.insert(0, '.')
from timm.models import register_model
from mmmetaformer.models.archs import METAFORMER_ARCHS
from tests.helpers import GROWING_TINY_ARCH, tiny_timm_metaformer
for family in ('poolformer', 'identityformer'):
    sizes = METAFORMER_ARCHS[family]
    sizes['tiny'] = dict(sizes['s12'], **GROWING_TINY_ARCH)
@register_model
def poolformer_tiny(pretrained=False, features_only=False, **kwargs):
    assert not pretrained and not any(kwargs.values()), kwargs
    return tiny_timm_metaformer('poolformer_s12', features_only)
sys.argv = ['tools/analysis/benchmark_backbone.py', *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.fixture(scope='module')
def backbone_results(tmp_path_factory):
    # every column kind (compiled with the cheap 'eager' backend), both
    # modes, a family timm has and one it has not, a size with its batch
    path = tmp_path_factory.mktemp('bench') / 'figures.json'
    proc = subprocess.run(
        [
            sys.executable,
            '-c',
            WITH_TINY_MODELS,
            '--models',
            POOL,
            IDENT,
            '--sizes',
            '64x64',
            '64x96@2',
            '--columns',
            'eager',
            'fused',
            'compiled',
            'onnx',
            'timm',
            '--compile-backend',
            'eager',
            '--runs',
            '1',
            '--warmup',
            '0',
            '--threads',
            '1',
            '--json',
            str(path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout, json.loads(path.read_text())


@pytest.fixture(scope='module')
def backbone_run(backbone_results):
    return backbone_results[0]


def test_every_column_is_checked_before_timing(backbone_run):
    out = backbone_run
    for column in ('eager', 'fused', 'compiled', 'onnx'):
        assert re.search(
            rf'check {POOL} 64x64 {column} vs timm: '
            r'max abs diff \S+ \(max \|output\| \S+\) OK',
            out,
        )
    for column in ('fused', 'compiled', 'onnx'):
        assert re.search(
            rf'check {IDENT} 64x64 {column} vs '
            r'eager: .* OK',
            out,
        )
    assert 'MISMATCH' not in out
    # checks come before the timings of their model
    assert out.index(f'check {POOL} 64x64 onnx') < out.index(
        f'{POOL} 64x64 eval:'
    )
    assert '- torch threads: 1' in out
    assert re.search(r'fp32 GEMM rate \d+\.\d GFLOP/s', out)


def test_figures_are_consistent(backbone_results):
    """Ratios are of the measured times, floors of the MACs at the highest
    measured GEMM rate, the training floor 3 forward floors, and a batch
    of 2 counts twice the MACs of a batch of 1 at the same size."""
    _, figures = backbone_results
    rate = figures['floor_rate']
    assert rate >= max(figures['gemm_rates']) > 0
    assert len(figures['gemm_rates']) == 3  # start, second model, end
    rows = {(r['model'], r['size']): r for r in figures['inference']}
    assert set(rows) == {
        (m, s) for m in (POOL, IDENT) for s in ('64x64', '64x96@2')
    }
    for row in rows.values():
        assert row['floor'] == pytest.approx(2 * row['macs'] / rate / 1e6)
        assert all(ms > 0 for ms in row['ms'].values())
        # a floor, whatever the probe reached: no measured time below it
        assert row['floor'] <= min(row['ms'].values()) * (1 + 1e-9)
        for key, value in row['ratios'].items():
            ours, timm_column = key.split('/')
            assert value == pytest.approx(
                row['ms'][ours] / row['ms'][timm_column]
            )
    pool = rows[(POOL, '64x64')]
    assert set(pool['ms']) == {'eager', 'fused', 'compiled', 'onnx', 'timm'}
    assert set(pool['ratios']) == {'eager/timm', 'fused/timm', 'onnx/timm'}
    assert all(mb > 0 for mb in pool['mb'].values())
    ident = rows[(IDENT, '64x64')]
    assert 'timm' not in ident['ms'] and ident['ratios'] == {}
    assert ident['reference'] == 'ours eager'
    # MACs at 64x96 batch 2 = 2 x 1.5 x those at 64x64 batch 1, to the
    # rounding of the odd stage sizes
    assert rows[(POOL, '64x96@2')]['macs'] == pytest.approx(
        3 * pool['macs'], rel=0.05
    )
    for row in figures['training']:
        assert row['floor'] == pytest.approx(
            3 * rows[(row['model'], row['size'])]['floor']
        )
        ours_ms, timm_ms = row['ms']
        ours_mb, timm_mb = row['mb']
        assert ours_ms > 0 and ours_mb > 0
        if row['model'] == POOL:
            assert row['ratio'] == pytest.approx(ours_ms / timm_ms)
            assert row['memory_ratio'] == pytest.approx(ours_mb / timm_mb)
        else:
            assert timm_ms is None and row['ratio'] is None


def test_tables_name_every_column(backbone_run):
    out = backbone_run
    for title in ('**Inference**', '**Against timm**', '**Training step**'):
        assert title in out
    assert (
        '| ours eager | ours fused | ours compiled | onnxruntime | '
        'timm eager |' in out
    )
    assert 'Targets' not in out and 'verdict' not in out


def test_floors_use_the_highest_rate_measured(backbone_run):
    rates = re.search(
        r'GEMM rates measured \(start, before each later '
        r'model, end\): ([\d., ]+) GFLOP/s; the floors use '
        r'the highest rate measured, ([\d.]+) \(by '
        r'(GEMM probe|a timed cell)\)',
        backbone_run,
    )
    measured = [float(r) for r in rates.group(1).split(', ')]
    assert len(measured) == 3  # start (first model), second model, end
    floor_rate = float(rates.group(2))
    if rates.group(3) == 'GEMM probe':
        assert floor_rate == max(measured)
    else:
        assert floor_rate > max(measured)


def test_tables_show_the_figures(backbone_results):
    """The markdown tables print the same figures as the JSON: times,
    floors and the ratios of ours to timm."""
    out, figures = backbone_results
    row = next(
        r
        for r in figures['inference']
        if (r['model'], r['size']) == (POOL, '64x64')
    )
    ms = row['ms']
    cells = [
        f'{ms[c]:.1f}' for c in ('eager', 'fused', 'compiled', 'onnx', 'timm')
    ]
    assert (
        f'| {POOL} | 64x64 | timm eager | {row["floor"]:.1f} | '
        + ' | '.join(cells)
        + ' |'
    ) in out
    ratios = [f'{ms[c] / ms["timm"]:.2f}' for c in ('eager', 'fused', 'onnx')]
    assert f'| {POOL} | 64x64 | ' + ' | '.join(ratios) + ' | ' in out
    train = next(
        r
        for r in figures['training']
        if (r['model'], r['size']) == (POOL, '64x64')
    )
    assert (
        f'| {POOL} | 64x64 | {train["floor"]:.1f} | '
        f'{train["ms"][0]:.1f} | {train["ms"][1]:.1f} | '
        f'{train["ratio"]:.2f} |'
    ) in out


# offsets exact in fp32 next to 1.0: 6.1e-5, 4.9e-4, 2e-3
@pytest.mark.parametrize(
    'column, offset, ok',
    [
        ('fused', 2**-14, True),
        ('fused', 2**-11, False),  # PyTorch: 1e-4
        ('onnx', 2**-11, True),
        ('onnx', 2**-9, False),  # other runtimes: 1e-3
    ],
)
def test_a_column_beyond_its_tolerance_is_a_mismatch(column, offset, ok):
    outputs = [torch.ones(1, 4, 8, 8), torch.ones(1, 8, 4, 4)]
    runners = {
        'timm': lambda x: outputs,
        column: lambda x: [outputs[0], outputs[1] + offset],
    }
    lines = []
    if ok:
        first = bench.check_columns(
            'm', '8x8', runners, 'timm', None, 'cpu', lines.append
        )
        assert set(first) == {'timm', column}
    else:
        with pytest.raises(bench.OutputMismatch) as exc:
            bench.check_columns(
                'm', '8x8', runners, 'timm', None, 'cpu', lines.append
            )
        assert str(exc.value) == (
            f'm {column} outputs differ from timm at 8x8; not timing'
        )
    assert len(lines) == 1
    assert lines[0].startswith(
        f'check m 8x8 {column} vs timm: max abs diff {offset:.3g} '
    )
    assert lines[0].endswith('MISMATCH' if not ok else 'OK')


def test_a_mismatching_column_stops_the_tool(monkeypatch, capsys):
    """Exit status 1 and one error line, before anything is timed (here
    every PyTorch column fails: no difference is within a negative
    tolerance)."""
    tool = load_backbone_tool()
    monkeypatch.setattr(bench, 'REL_TOLERANCE', -1.0)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exc:
            tool.main(
                [
                    '--device',
                    'cpu',
                    '--models',
                    'identityformer_s12',
                    '--sizes',
                    '32x32',
                    '--columns',
                    'eager',
                    'fused',
                    '--runs',
                    '1',
                    '--warmup',
                    '0',
                    '--threads',
                    '1',
                ]
            )
    finally:
        torch.set_num_threads(threads)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert re.search(
        r'check identityformer_s12 32x32 fused vs eager: .* '
        'MISMATCH',
        out,
    )
    assert err.strip() == (
        'error: identityformer_s12 fused outputs differ '
        'from eager at 32x32; not timing'
    )
    assert ' eval: ' not in out and '**Inference**' not in out


def test_training_steps_leave_the_inference_models_as_they_were(capsys):
    """ConvMixer has BatchNorm: training steps at the first size must not
    change the running statistics the next size's eager model uses (its
    fused copy, made at the first size, would no longer match)."""
    tool = load_backbone_tool()
    threads = torch.get_num_threads()
    try:
        tool.main(
            [
                '--device',
                'cpu',
                '--models',
                'convmixer_768_32',
                '--sizes',
                '32x32',
                '32x32@2',
                '--columns',
                'eager',
                'fused',
                '--runs',
                '1',
                '--warmup',
                '0',
                '--threads',
                '1',
            ]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert 'convmixer_768_32 32x32 train: ours' in out
    assert re.search(
        r'check convmixer_768_32 32x32@2 fused vs eager: .* OK', out
    )
    assert 'convmixer_768_32 32x32@2 train: ours' in out


def test_unknown_model_is_a_clear_error():
    proc = run_tool(
        'analysis/benchmark_backbone.py',
        '--models',
        'caformer_s19',
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: unknown model 'caformer_s19'" in proc.stderr
    for valid in ('caformer_s18', 'identityformer_s12', 'convmixer_768_32'):
        assert valid in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
    'args, message',
    [
        (
            ['--sizes', '512', '20x900'],
            "--sizes entry '20x900' is not HxW with both sides >= 32",
        ),
        (['--runs', '0'], '--runs (0) and --batch-size (1) must be >= 1'),
        (['--threads', '0'], '--threads must be >= 1, got 0'),
        (
            ['--sizes', '64x64@0'],
            "--sizes entry '64x64@0': the batch after @ must be an int >= 1",
        ),
        (
            ['--amp', 'bf16', '--columns', 'eager', 'onnx'],
            "--amp times PyTorch under autocast; leave 'onnx' out of "
            '--columns',
        ),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    tool = load_backbone_tool()
    from mmmetaformer_tools.launch import LaunchError

    threads = torch.get_num_threads()
    try:
        with pytest.raises(LaunchError) as exc:
            tool.main(['--device', 'cpu'] + args)
    finally:
        torch.set_num_threads(threads)
    assert message in str(exc.value)


def test_unknown_column_lists_the_valid_ones(capsys):
    tool = load_backbone_tool()
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['--columns', 'eager', 'tensorrt'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tensorrt'" in err
    assert 'fused_compiled' in err and 'timm_compiled' in err


def test_cpu_clock_makes_openmp_wait_passively(monkeypatch):
    tool = load_backbone_tool()
    monkeypatch.delenv('OMP_WAIT_POLICY', raising=False)
    tool.passive_wait_env(['--clock', 'wall'])
    assert 'OMP_WAIT_POLICY' not in tool.os.environ
    tool.passive_wait_env(['--models', 'x', '--clock', 'cpu'])
    assert tool.os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
    tool.passive_wait_env(['--clock=cpu'])
    assert tool.os.environ['OMP_WAIT_POLICY'] == 'ACTIVE'


# ---------------------------------------------------------------------------
# tools/analysis/benchmark.py: a whole detection or segmentation config
# ---------------------------------------------------------------------------
TOY_RETINANET = 'configs/toy/retinanet_poolformer_s12_toy_coco.py'


def test_config_benchmark_on_random_images_needs_no_dataset(tmp_path):
    # cwd without data/: --image-size must not look for the dataset
    proc = run_tool(
        'analysis/benchmark.py',
        REPO_ROOT / TOY_RETINANET,
        '--image-size',
        '96x128',
        '--num-images',
        '2',
        '--warmup',
        '1',
        '--threads',
        '1',
        '--mac-floor',
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cells = benchmark_row(proc.stdout, 'retinanet_poolformer_s12_toy_coco.py')
    assert cells[1:3] == ['cpu', '2']
    assert 'random 96x128 images' in proc.stdout
    assert 'weights: random' in proc.stdout
    # the floor: the network's MACs at the GEMM rate, never above the
    # measured median, and the ratio printed is the table's median over it
    floor = re.search(
        r'MAC floor: ([\d.]+) GMAC .* at ([\d.]+) GFLOP/s .* = ([\d.]+) ms; '
        r'median step = ([\d.]+)x the floor',
        proc.stdout,
    )
    assert floor, proc.stdout[-2000:]
    gmacs, rate, floor_ms, times = map(float, floor.groups())
    assert gmacs > 0
    assert floor_ms == pytest.approx(2 * gmacs / rate * 1e3, rel=2e-3)
    assert times >= 1.0
    assert times * floor_ms == pytest.approx(float(cells[5]), rel=0.01)


@pytest.mark.parametrize(
    'args, message',
    [
        (['--image-size', '20x900'], "--image-size '20x900' is not HxW"),
        (['--num-images', '0'], '--num-images must be >= 1 (got 0)'),
        (['no_such.pth'], 'Checkpoint file not found: no_such.pth'),
        (
            ['--cfg-options', 'model.backbone.archh=s12'],
            "no key 'archh' under model.backbone; did you mean 'arch'?",
        ),
    ],
)
def test_config_benchmark_bad_input_is_a_clear_error(args, message, tmp_path):
    if args[0].endswith('.pth'):
        args = args + ['--image-size', '64x64']
    proc = run_tool(
        'analysis/benchmark.py',
        REPO_ROOT / TOY_RETINANET,
        *args,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_config_benchmark_missing_dataset_points_to_generator(tmp_path):
    proc = run_tool(
        'analysis/benchmark.py',
        REPO_ROOT / TOY_RETINANET,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "data_root 'data/toy_coco/' does not exist" in proc.stderr
    assert 'make_toy_dataset.py coco data/toy_coco/' in proc.stderr
