"""tools/convert_checkpoint.py checks what it writes; tools/infer.py takes a
file, folder or list and writes pictures and predictions.

The files are small: a published size's tensors where only their names
and shapes are judged are views of one zero (kilobytes); what the tools
write (conversions, a detector's checkpoint) is of one-block, narrow
models (``tests/helpers.py``)."""

import functools
import json

import pytest
import torch

from mmmetaformer.checkpoint import read_checkpoint, to_native
from mmmetaformer.checkpoint.formats import CLASSIFIER_PREFIXES
from tests.helpers import (
    GROWING_TINY_DIMS,
    REPO_ROOT,
    load_tool,
    run_tool,
    tiny_config,
    tiny_timm_metaformer,
    tiny_variant,
)

CONFIGS = REPO_ROOT / 'configs'


@functools.cache
def timm_caformer_s18():
    timm = pytest.importorskip('timm')
    return timm.create_model('caformer_s18', pretrained=False)


@pytest.fixture(scope='module')
def caformer_s18_shapes(tmp_path_factory):
    """CAFormer-S18's tensors in timm's layout, each a view of one zero
    (stride 0): the published names and shapes, which are all the format
    and fit checks judge, in a file of kilobytes instead of 100 MB."""
    path = tmp_path_factory.mktemp('timm') / 'caformer_s18.pth'
    torch.save(
        {
            k: torch.zeros((), dtype=v.dtype).expand(v.shape)
            for k, v in timm_caformer_s18().state_dict().items()
        },
        path,
    )
    return path


@pytest.fixture(scope='module')
def tiny_caformer_timm(tmp_path_factory):
    """A CAFormer in timm's layout, one block a stage of growing widths
    (random values; timm's generic MetaFormer with caformer_s18's mixers and
    norms, checked against timm's caformer_s18), and
    ``configs/retinanet_caformer_s18_coco.py`` with that backbone
    (``tiny_variant``)."""
    model = tiny_timm_metaformer('caformer_s18')  # checked against timm's
    directory = tmp_path_factory.mktemp('tiny_timm')
    path = directory / 'caformer_tiny.pth'
    torch.save(model.state_dict(), path)
    config = tiny_variant(
        directory,
        CONFIGS / 'retinanet_caformer_s18_coco.py',
        'retinanet',
        GROWING_TINY_DIMS,
    )
    return path, config


def test_weights_converted_in_the_wrong_format_are_refused(
    caformer_s18_shapes, tmp_path
):
    dst = tmp_path / 'out.pth'
    proc = run_tool(
        'convert_checkpoint.py',
        caformer_s18_shapes,
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
    caformer_s18_shapes, tiny_caformer_timm, tmp_path
):
    """The tool tries every registered arch: timm's CAFormer-S18 tensors
    fit caformer_s18 alone. Judged here on the published shapes by the
    tool's own search (the file it would write is 100 MB of zeros); the
    tool's run converts a tiny CAFormer in timm's layout, writes it and
    names what it fits (the backbone of a config)."""
    convert = load_tool('convert_checkpoint.py')
    state_dict, fmt, _ = to_native(read_checkpoint(caformer_s18_shapes))
    assert fmt == 'timm'
    backbone = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith(CLASSIFIER_PREFIXES)
    }
    args = convert.parse_args([str(caformer_s18_shapes), 'unused.pth'])
    assert convert.check_backbone(args, backbone) == ['caformer_s18']

    src, config = tiny_caformer_timm
    dst = tmp_path / 'out.pth'
    proc = run_tool(
        'convert_checkpoint.py', src, dst, '--check-config', config
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'format timm, wrote' in proc.stdout
    assert f'they fit {config}' in proc.stdout
    assert dst.is_file()


def test_check_config_accepts_a_backbone_conversion(
    tiny_caformer_timm, tmp_path
):
    """A tiny PoolFormer against a config with that backbone, then against
    one with a CAFormer of the same widths (other mixers and norms)."""
    import mmmetaformer  # noqa: F401
    from mmmetaformer.registry import MODELS

    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    dims = GROWING_TINY_DIMS
    torch.save(
        MODELS.build(
            dict(type='PoolFormer', arch=dict(depths=[1, 1, 1, 1], dims=dims))
        ).state_dict(),
        src,
    )
    config = tiny_variant(
        tmp_path,
        CONFIGS / 'retinanet_poolformer_s12_coco.py',
        'retinanet',
        dims,
    )
    proc = run_tool(
        'convert_checkpoint.py', src, dst, '--check-config', config
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'they fit {config}' in proc.stdout
    proc = run_tool(
        'convert_checkpoint.py',
        src,
        dst,
        '--check-config',
        tiny_caformer_timm[1],
    )
    assert proc.returncode == 2
    assert 'fit no backbone' in proc.stderr


@pytest.fixture(scope='module')
def toy_detector(tmp_path_factory):
    """A toy RetinaNet checkpoint (its own random weights) and 3 images."""
    from mmmetaformer_tools import toy

    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmmetaformer  # noqa: F401

    root = tmp_path_factory.mktemp('infer')
    toy.make_coco(root / 'toy_coco', num_train=1, num_val=3, img_size=64)
    # the toy RetinaNet with a one-block, narrow backbone and heads
    config = tiny_config(root, 'retinanet')
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
    return config, ckpt, root / 'toy_coco' / 'val2017'


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
