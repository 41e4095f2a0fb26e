"""The benchmark tools run end to end at a tiny size and reject bad input.

``benchmark_backbone.py`` (ours against timm) and ``benchmark.py`` (a whole
config); the dataset-fed runs of ``benchmark.py`` with a trained checkpoint
are in the detection and segmentation config tests, next to the toy runs
that make the checkpoints.
"""
import pytest

from .helpers import REPO_ROOT, benchmark_row, run_tool


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


def test_bad_size_is_a_clear_error():
    proc = run_tool('analysis/benchmark_backbone.py', '--sizes', '512',
                    '20x900', timeout=120)
    assert proc.returncode == 2
    assert ("error: --sizes entry '20x900' is not HxW with both sides >= 32"
            in proc.stderr)
    assert 'Traceback' not in proc.stderr


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
