"""The benchmark tools run end to end at a tiny size and reject bad input.

``benchmark_backbone.py`` (ours against timm) and ``benchmark.py`` (a whole
config); the dataset-fed runs of ``benchmark.py`` with a trained checkpoint
are in the detection and segmentation config tests, next to the toy runs
that make the checkpoints.
"""
import importlib.util
import re

import pytest
import torch

from .helpers import REPO_ROOT, benchmark_row, run_tool


def load_backbone_tool():
    """``tools/analysis/benchmark_backbone.py`` as a module (no subprocess)."""
    path = REPO_ROOT / 'tools' / 'analysis' / 'benchmark_backbone.py'
    spec = importlib.util.spec_from_file_location('benchmark_backbone', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(stdout, title):
    """``(header cells, {(model, size): row cells})`` of a printed table."""
    lines = stdout[stdout.index(title):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('|'))
    header = [c.strip() for c in lines[first].strip('|').split('|')]
    rows = {}
    for line in lines[first + 2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert len(cells) == len(header), (header, cells)
        rows[(cells[0], cells[1])] = cells
    return header, rows


def half_unit(cell):
    """Half the last printed decimal of ``cell``: its rounding error."""
    text = str(cell)
    decimals = len(text.split('.')[1]) if '.' in text else 0
    return 0.5 * 10 ** -decimals if isinstance(cell, str) else 0.0


def assert_ratio(cell, numerator, denominator):
    """The printed ratio is of the unrounded times: it must lie in the
    range of ratios the printed (rounded) times allow, plus its own
    rounding."""
    num, den = float(numerator), float(denominator)
    num_err, den_err = half_unit(numerator), half_unit(denominator)
    low = (num - num_err) / (den + den_err)
    high = (num + num_err) / max(den - den_err, 1e-12)
    assert low - 0.005 - 1e-9 <= float(cell) <= high + 0.005 + 1e-9, (
        cell, numerator, denominator)


@pytest.fixture(scope='module')
def backbone_run():
    # every column kind (compiled with the cheap 'eager' backend), both
    # modes, a family timm has and one it has not
    proc = run_tool('analysis/benchmark_backbone.py', '--models',
                    'poolformer_s12', 'identityformer_s12', '--sizes',
                    '64x64', '--columns', 'eager', 'fused', 'compiled',
                    'onnx', 'timm', '--compile-backend', 'eager', '--runs',
                    '1', '--warmup', '0', '--threads', '1', timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_every_column_is_checked_before_timing(backbone_run):
    out = backbone_run
    for column in ('eager', 'fused', 'compiled', 'onnx'):
        assert re.search(rf'check poolformer_s12 64x64 {column} vs timm: '
                         r'max abs diff \S+ \(max \|output\| \S+\) OK', out)
    for column in ('fused', 'compiled', 'onnx'):
        assert re.search(rf'check identityformer_s12 64x64 {column} vs '
                         r'eager: .* OK', out)
    assert 'MISMATCH' not in out
    # checks come before the timings of their model
    assert out.index('check poolformer_s12 64x64 onnx') < out.index(
        'poolformer_s12 64x64 eval:')
    assert '- torch threads: 1' in out
    assert re.search(r'fp32 GEMM rate \d+\.\d GFLOP/s', out)


def test_tables_have_the_columns_and_consistent_ratios(backbone_run):
    out = backbone_run
    header, rows = table(out, '**Inference**')
    assert header == ['model', 'size', 'checked vs', 'MAC floor',
                      'ours eager', 'ours fused', 'ours compiled',
                      'onnxruntime', 'timm eager']
    pool = rows[('poolformer_s12', '64x64')]
    ident = rows[('identityformer_s12', '64x64')]
    assert pool[2] == 'timm eager' and ident[2] == 'ours eager'
    assert ident[-1] == '-'  # no timm features model for IdentityFormer
    times = dict(zip(header[4:], pool[4:]))

    header, ratios = table(out, '**Against timm**')
    assert header[2:6] == ['ours eager / timm eager',
                           'ours fused / timm eager',
                           'onnxruntime / timm eager',
                           'best of ours / floor']
    cells = ratios[('poolformer_s12', '64x64')]
    assert_ratio(cells[2], times['ours eager'], times['timm eager'])
    assert_ratio(cells[3], times['ours fused'], times['timm eager'])
    assert_ratio(cells[4], times['onnxruntime'], times['timm eager'])
    best = min((times[c] for c in ('ours eager', 'ours fused',
                                   'ours compiled', 'onnxruntime')),
               key=float)
    assert_ratio(cells[5], best, pool[3])
    assert ratios[('identityformer_s12', '64x64')][2] == '-'

    header, train = table(out, '**Training step**')
    assert header[3:6] == ['ours ms', 'timm ms', 'ours / timm']
    cells = train[('poolformer_s12', '64x64')]
    assert_ratio(cells[5], cells[3], cells[4])
    assert_ratio(cells[8], cells[6], cells[7])
    # the training floor is 3 forward floors
    assert abs(float(cells[2]) - 3 * float(pool[3])) <= (
        3 * half_unit(pool[3]) + half_unit(cells[2]) + 1e-9), (cells, pool)
    assert train[('identityformer_s12', '64x64')][4] == '-'


def test_targets_table_judges_every_target_with_a_reference(backbone_run):
    out = backbone_run
    lines = out[out.index('**Targets**'):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('|'))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith('|'):
            break
        rows.append([c.strip() for c in line.strip('|').split('|')])
    # IdentityFormer has no timm reference; no timm_compiled column ran
    assert {r[0] for r in rows} == {'poolformer_s12'}
    assert [(r[2], r[3]) for r in rows] == [
        ('eager', '0.95'), ('fused', '0.70'), ('onnxruntime', '1.00'),
        ('training step', '0.85'), ('training memory', '0.80')]
    _, inference = table(out, '**Inference**')
    timm_ms = inference[('poolformer_s12', '64x64')][-1]
    floor = inference[('poolformer_s12', '64x64')][3]
    for model, size, what, limit, measured, allowed, row_floor, over, \
            verdict in rows:
        value, unit = allowed.split()
        assert unit == ('MB' if what == 'training memory' else 'ms')
        if what in ('eager', 'fused', 'onnxruntime'):
            # allowed = limit x timm, both printed to 0.1
            assert abs(float(value) - float(limit) * float(timm_ms)) <= (
                0.05 + 0.05 * float(limit) + 1e-9), (allowed, timm_ms)
            assert row_floor == floor
            assert_ratio(over, value, floor)
        expected = ('met' if float(measured) <= float(limit) else
                    'below the floor' if over != '-' and float(over) < 1
                    else 'not met')
        # the ratio is rounded; a tie at the limit may read either way
        assert verdict == expected or measured == limit, (what, verdict)


@pytest.mark.parametrize('value, reference, limit, floor, expected', [
    (70.0, 100.0, 0.8, 90.0, (80.0, 80 / 90, 'met')),
    (85.0, 100.0, 0.8, 50.0, (80.0, 1.6, 'not met')),
    (85.0, 100.0, 0.8, 90.0, (80.0, 80 / 90, 'below the floor')),
    (85.0, 100.0, 0.8, None, (80.0, None, 'not met')),  # memory
])
def test_target_verdict(value, reference, limit, floor, expected):
    allowed, over, verdict = load_backbone_tool().target_verdict(
        value, reference, limit, floor)
    assert verdict == expected[2]
    assert allowed == pytest.approx(expected[0])
    assert over == (None if expected[1] is None else
                    pytest.approx(expected[1]))


def test_floors_use_the_highest_measured_gemm_rate(backbone_run):
    rates = re.search(r'GEMM rates measured \(start, before each later '
                      r'model, end\): ([\d., ]+) GFLOP/s; the floors use '
                      r'the highest, ([\d.]+)', backbone_run)
    measured = [float(r) for r in rates.group(1).split(', ')]
    assert len(measured) == 3  # start (first model), second model, end
    assert float(rates.group(2)) == max(measured)


# offsets exact in fp32 next to 1.0: 6.1e-5, 4.9e-4, 2e-3
@pytest.mark.parametrize('column, offset, ok', [
    ('fused', 2**-14, True), ('fused', 2**-11, False),  # PyTorch: 1e-4
    ('onnx', 2**-11, True), ('onnx', 2**-9, False),  # other runtimes: 1e-3
])
def test_a_mismatching_column_stops_the_tool(column, offset, ok, capsys):
    tool = load_backbone_tool()
    outputs = [torch.ones(1, 4, 8, 8), torch.ones(1, 8, 4, 4)]
    runners = {'timm': lambda x: outputs,
               column: lambda x: [outputs[0], outputs[1] + offset]}
    if ok:
        tool.check_outputs('m', '8x8', runners, 'timm', None, 'cpu')
    else:
        with pytest.raises(SystemExit) as exc:
            tool.check_outputs('m', '8x8', runners, 'timm', None, 'cpu')
        assert exc.value.code == 1
    captured = capsys.readouterr()
    assert f'check m 8x8 {column} vs timm: max abs diff {offset:.3g} ' in \
        captured.out
    assert ('MISMATCH' in captured.out) is not ok
    assert (f'error: m {column} outputs differ from timm at 8x8'
            in captured.err) is not ok


def test_unknown_model_is_a_clear_error():
    proc = run_tool('analysis/benchmark_backbone.py', '--models',
                    'caformer_s19', timeout=120)
    assert proc.returncode == 2
    assert "error: unknown model 'caformer_s19'" in proc.stderr
    for valid in ('caformer_s18', 'identityformer_s12', 'convmixer_768_32'):
        assert valid in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('args, message', [
    (['--sizes', '512', '20x900'],
     "--sizes entry '20x900' is not HxW with both sides >= 32"),
    (['--runs', '0'], '--runs (0) and --batch-size (1) must be >= 1'),
    (['--threads', '0'], '--threads must be >= 1, got 0'),
])
def test_bad_arguments_are_clear_errors(args, message):
    tool = load_backbone_tool()
    from mmmetaformer.utils.launch import LaunchError
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
    proc = run_tool('analysis/benchmark.py', REPO_ROOT / TOY_RETINANET,
                    '--image-size', '96x128', '--num-images', '2',
                    '--warmup', '1', '--threads', '1', cwd=tmp_path,
                    timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cells = benchmark_row(proc.stdout, 'retinanet_poolformer_s12_toy_coco.py')
    assert cells[1:3] == ['cpu', '2']
    assert 'random 96x128 images' in proc.stdout
    assert 'weights: random' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--image-size', '20x900'], "--image-size '20x900' is not HxW"),
    (['--num-images', '0'], '--num-images must be >= 1 (got 0)'),
    (['no_such.pth'], 'Checkpoint file not found: no_such.pth'),
    (['--cfg-options', 'model.backbone.archh=s12'],
     "no key 'archh' under model.backbone; did you mean 'arch'?"),
])
def test_config_benchmark_bad_input_is_a_clear_error(args, message,
                                                     tmp_path):
    if args[0].endswith('.pth'):
        args = args + ['--image-size', '64x64']
    proc = run_tool('analysis/benchmark.py', REPO_ROOT / TOY_RETINANET,
                    *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_config_benchmark_missing_dataset_points_to_generator(tmp_path):
    proc = run_tool('analysis/benchmark.py', REPO_ROOT / TOY_RETINANET,
                    cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "data_root 'data/toy_coco/' does not exist" in proc.stderr
    assert 'make_toy_dataset.py coco data/toy_coco/' in proc.stderr
