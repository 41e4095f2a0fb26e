"""tools/convert_checkpoint.py checks what it writes; tools/infer.py takes a
file, folder or list and writes pictures and predictions."""

import json

import pytest
import torch

from tests.helpers import REPO_ROOT, run_tool

CONFIGS = REPO_ROOT / 'configs'


@pytest.fixture(scope='module')
def caformer_timm_file(tmp_path_factory):
    """CAFormer-S18 weights in timm's layout (random values)."""
    timm = pytest.importorskip('timm')
    path = tmp_path_factory.mktemp('timm') / 'caformer_s18.pth'
    torch.save(
        timm.create_model('caformer_s18', pretrained=False).state_dict(), path
    )
    yield path
    path.unlink()  # ~100 MB, read by the tests below


def test_weights_converted_in_the_wrong_format_are_refused(
    caformer_timm_file, tmp_path
):
    dst = tmp_path / 'out.pth'
    proc = run_tool(
        'convert_checkpoint.py',
        caformer_timm_file,
        dst,
        '--format',
        'poolformer_v1',
        '--arch',
        'caformer_s18',
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith('error')]
    assert 'fit no backbone; against caformer_s18' in line
    assert not dst.exists()


def test_converted_weights_name_the_arch_they_fit(
    caformer_timm_file, tmp_path
):
    dst = tmp_path / 'out.pth'
    proc = run_tool('convert_checkpoint.py', caformer_timm_file, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'they fit caformer_s18' in proc.stdout
    assert dst.is_file()
    dst.unlink()  # ~100 MB, checked by the converter itself


def test_check_config_accepts_a_backbone_conversion(tmp_path):
    import mmmetaformer  # noqa: F401
    from mmmetaformer.registry import MODELS

    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(
        MODELS.build(dict(type='PoolFormer', arch='s12')).state_dict(), src
    )
    proc = run_tool(
        'convert_checkpoint.py',
        src,
        dst,
        '--check-config',
        CONFIGS / 'retinanet_poolformer_s12_coco.py',
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'retinanet_poolformer_s12_coco.py' in proc.stdout
    proc = run_tool(
        'convert_checkpoint.py',
        src,
        dst,
        '--check-config',
        CONFIGS / 'retinanet_caformer_s18_coco.py',
    )
    assert proc.returncode == 2
    assert 'fit no backbone' in proc.stderr
    for path in (src, dst):  # ~47 MB each, checked by the converter
        path.unlink()


@pytest.fixture(scope='module')
def toy_detector(tmp_path_factory):
    """A toy RetinaNet checkpoint (its own random weights) and 3 images."""
    from mmmetaformer_tools import toy

    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmmetaformer  # noqa: F401

    root = tmp_path_factory.mktemp('infer')
    toy.make_coco(root / 'toy_coco', num_train=1, num_val=3, img_size=64)
    config = CONFIGS / 'toy' / 'retinanet_poolformer_s12_toy_coco.py'
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    ckpt = root / 'toy.pth'
    torch.save(
        {
            'state_dict': model.state_dict(),
            'meta': {'dataset_meta': {'classes': cfg.toy_classes}},
        },
        ckpt,
    )
    yield config, ckpt, root / 'toy_coco' / 'val2017'
    ckpt.unlink()  # ~50 MB, read by the tests below


def test_infer_a_folder_writes_pictures_and_json(toy_detector, tmp_path):
    config, ckpt, images = toy_detector
    out = tmp_path / 'out'
    proc = run_tool(
        'infer.py',
        images,
        config,
        ckpt,
        '--out-dir',
        out,
        '--score-thr',
        '0.001',
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    names = sorted(p.name for p in images.glob('*.jpg'))
    assert sorted(p.name for p in (out / 'vis').glob('*.jpg')) == names
    for name in names:
        pred = json.loads(
            (out / 'preds' / name.replace('.jpg', '.json')).read_text()
        )
        assert set(pred) >= {'labels', 'scores', 'bboxes'}
    # the model's own 0.05 would hide the untrained head's boxes: lowered
    assert (
        proc.stdout.count("the model's own threshold 0.05 lowered to 0.001")
        == 3
    )


def test_infer_a_list_and_an_undecodable_image(toy_detector, tmp_path):
    config, ckpt, images = toy_detector
    listed = sorted(images.glob('*.jpg'))[:2]
    (tmp_path / 'list.txt').write_text(''.join(f'{p}\n' for p in listed))
    out = tmp_path / 'out'
    proc = run_tool(
        'infer.py',
        tmp_path / 'list.txt',
        config,
        ckpt,
        '--out-dir',
        out,
        '--cfg-options',
        'model.test_cfg.score_thr=0.2',
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list((out / 'vis').glob('*.jpg'))) == 2
    assert "(the model's own threshold: 0.2)" in proc.stdout

    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not an image at all')
    proc = run_tool('infer.py', bad, config, ckpt, '--out-dir', out)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert 'bad.jpg' in proc.stderr.strip().splitlines()[-1]
