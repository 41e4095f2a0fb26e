"""One safe checkpoint reader for everything, and strict evaluation.

Importing mmmetaformer re-registers mmengine's CheckpointLoader schemes with
loaders that read ``torch.load(weights_only=True)`` plus a short allowlist
(``mmmetaformer/checkpoint/reader.py``). Checked here:

* the allowlist reads real Runner checkpoints (optimizer, message hub,
  schedulers, random state) and files in the published mmdet/mmseg
  layouts, identically to an unrestricted load;
* a planted pickle (its ``__reduce__`` writes a file) is refused before it
  runs, through mmengine's own loading functions, ``init_cfg``, http, and
  every tool (``--resume`` with a path and ``auto`` included);
* safetensors metadata survives reading;
* ``tools/test.py``, ``tools/infer.py`` and ``tools/analysis/benchmark.py``
  refuse a checkpoint that does not hold exactly the model's tensors, and
  print no metric.
"""

import copy
import functools
import http.server
import pickle
import re
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Tuple  # noqa: UP035  (TorchScript reads typing.Tuple)

from mmmetaformer_tools.toy import make_coco

import mmdet
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel, BaseModule
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import mmmetaformer  # noqa: F401  (installs the safe loaders)
from mmmetaformer.checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    check_model_fits,
    read_checkpoint,
    schemes,
    to_native,
)
from mmmetaformer.checkpoint.reader import TORCH_LOAD_IS_SAFE
from mmmetaformer.registry import MODELS

from .forked_tools import ForkedTool
from .helpers import TINY_ARCH, load_tool, tiny_backbone_config, tiny_config

MMDET_TEST_TOOL = str(Path(mmdet.__file__).parent / '.mim/tools/test.py')
SMALL = [
    'test_dataloader.dataset.pipeline.1.scale=(64,64)',
    'train_dataloader.dataset.pipeline.2.scale=(64,64)',
    'val_dataloader.dataset.pipeline.1.scale=(64,64)',
]


class PlantedPayload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class PlantedShellCommand:
    """Unpickling this runs ``os.system``; torch words the refusal of a
    blocked module (posix) differently from that of a global (exec)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f'touch {self.marker}',))


class HistoryBufferUpdate:
    """A pickle reaching a HistoryBuffer method other than its statistics."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, 'update'))


def plant(path, marker, payload=PlantedPayload):
    """A checkpoint that looks normal but runs code when unpickled."""
    torch.save(
        {
            'meta': {'epoch': 1, 'note': payload(marker)},
            'state_dict': OrderedDict(w=torch.zeros(2)),
        },
        path,
    )
    return path


def test_planted_payload_runs_without_the_safe_reader(tmp_path):
    """The payload is real: an unrestricted torch.load runs it."""
    marker = tmp_path / 'ran'
    torch.load(plant(tmp_path / 'evil.pth', marker), weights_only=False)
    assert marker.read_text() == 'ran'


# --- the allowlist against real checkpoints ---------------------------------


class TinyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.bn(self.linear(inputs))
        if mode == 'loss':
            return dict(loss=((out - labels) ** 2).mean())
        return out


class TinyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(
            inputs=torch.full((4,), float(index)), labels=torch.ones(2)
        )


def tiny_runner(work_dir, **kwargs):
    return Runner(
        model=TinyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=TinyDataset(),
            batch_size=4,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=2),
            dict(type='CosineAnnealingLR', T_max=2, by_epoch=True),
        ],
        train_cfg=dict(by_epoch=True, max_epochs=2),
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=1)
        ),
        custom_hooks=[dict(type='ExactResumeHook')],
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs,
    )


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint of mmengine's Runner with everything resume needs."""
    work_dir = tmp_path_factory.mktemp('runner')
    tiny_runner(work_dir, experiment_name='safe_loading_train').train()
    return work_dir / 'epoch_1.pth'


def kind(obj):
    # the reader's arrays are an ndarray subclass that pickles as ndarray
    return np.ndarray if isinstance(obj, np.ndarray) else type(obj)


def assert_same(a, b, where='checkpoint'):
    """Equal objects, tensors and arrays compared exactly."""
    assert kind(a) is kind(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, HistoryBuffer):
        assert_same(a.data, b.data, where)
    else:
        assert a == b, where


def test_runner_checkpoint_reads_as_an_unrestricted_load(runner_checkpoint):
    checkpoint = read_checkpoint(runner_checkpoint)
    assert {
        'meta',
        'state_dict',
        'message_hub',
        'optimizer',
        'param_schedulers',
        'resume_state',
    } <= set(checkpoint)
    assert isinstance(
        checkpoint['message_hub']['log_scalars']['train/loss'], HistoryBuffer
    )
    assert_same(checkpoint, torch.load(runner_checkpoint, weights_only=False))


def test_torch_load_reads_runner_checkpoints_where_it_is_safe(
    runner_checkpoint,
):
    """On torch >= 2.6 the allowlist is registered process-wide, so torch's
    default load and mmengine's own local loader (which passes no
    ``weights_only``) read a Runner checkpoint; on older torch, where that
    default is unrestricted, nothing is registered."""
    from mmengine.runner.checkpoint import load_from_local as mmengine_local

    unrestricted = torch.load(runner_checkpoint, weights_only=False)
    if not TORCH_LOAD_IS_SAFE:
        with pytest.raises(Exception, match='HistoryBuffer'):
            torch.load(runner_checkpoint, weights_only=True)
        return
    assert_same(torch.load(runner_checkpoint), unrestricted)
    assert_same(mmengine_local(str(runner_checkpoint), None), unrestricted)


def test_read_arrays_are_saved_as_plain_numpy(runner_checkpoint, tmp_path):
    """What the reader rebuilt and a run saves again names no object of
    this package: a plain unrestricted load reads it without importing it."""
    checkpoint = read_checkpoint(runner_checkpoint)
    history = checkpoint['message_hub']['log_scalars']['train/loss']
    for copied in (copy.copy, copy.deepcopy):
        assert type(copied(history._log_history)) is np.ndarray
    path = tmp_path / 'saved_again.pth'
    torch.save(checkpoint, path)
    assert b'mmmetaformer' not in zipfile.ZipFile(path).read(
        'saved_again/data.pkl'
    )


def test_runner_resumes_through_the_safe_reader(runner_checkpoint, tmp_path):
    runner = tiny_runner(
        tmp_path,
        resume=True,
        load_from=str(runner_checkpoint),
        experiment_name='safe_loading_resume',
    )
    runner.train()
    assert (runner.epoch, runner.iter) == (2, 4)


def zoo_layouts():
    """Checkpoints laid out as the published mmdet and mmseg ones."""
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import ADE20KDataset

    state_dict = OrderedDict(
        [
            ('backbone.conv.weight', torch.randn(4, 3, 3, 3)),
            ('backbone.bn.num_batches_tracked', torch.tensor(7)),
        ]
    )
    coco, ade = CocoDataset.METAINFO, ADE20KDataset.METAINFO
    # mmdet 3.x / mmseg 1.x zoo: Runner meta, optimizer and message hub
    # stripped by publish_model, saved in torch's legacy format.
    mmengine_meta = dict(
        epoch=12,
        iter=87960,
        cfg='model = dict()',
        seed=0,
        experiment_name='retinanet_20230101_000000',
        time='20230101_000000',
        mmengine_version='0.7.1',
    )
    yield (
        'mmdet3_zoo',
        dict(
            meta=dict(
                mmengine_meta,
                dataset_meta=dict(
                    classes=coco['classes'], palette=coco['palette']
                ),
            ),
            state_dict=state_dict,
        ),
        False,
    )
    yield (
        'mmseg1_zoo',
        dict(
            meta=dict(
                mmengine_meta,
                dataset_meta=dict(
                    classes=ade['classes'], palette=ade['palette']
                ),
            ),
            state_dict=state_dict,
        ),
        False,
    )
    # mmdet 2.x / mmseg 0.x (mmcv runner): CLASSES/PALETTE in meta, numpy
    # values where the datasets had them.
    yield (
        'mmdet2_mmseg0',
        dict(
            meta=dict(
                mmdet_version='2.25.0',
                mmcv_version='1.6.0',
                config='',
                env_info='sys.platform: linux',
                epoch=24,
                iter=10,
                CLASSES=ade['classes'],
                PALETTE=np.array(ade['palette'], dtype=np.uint8),
                seed=np.int64(42),
                time='Mon Jan  2 00:00:00 2023',
                hook_msgs=dict(last_ckpt='work_dirs/latest.pth'),
            ),
            state_dict=state_dict,
            optimizer=dict(state={}, param_groups=[dict(lr=1e-4, params=[0])]),
        ),
        True,
    )


@pytest.mark.parametrize(
    'name,checkpoint,zip_format',
    list(zoo_layouts()),
    ids=[name for name, _, _ in zoo_layouts()],
)
def test_published_layouts_read_as_an_unrestricted_load(
    name, checkpoint, zip_format, tmp_path
):
    path = tmp_path / f'{name}.pth'
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    assert_same(read_checkpoint(path), torch.load(path, weights_only=False))


# --- refusals in process ----------------------------------------------------


def test_every_scheme_of_checkpoint_loader_is_the_safe_one():
    for prefixes, loader in schemes.SCHEMES:
        for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
            example = prefix.replace(r'(\S+\:)?', '') + 'x/model.pth'
            assert CheckpointLoader._get_checkpoint_loader(example) is loader


@pytest.mark.parametrize(
    'payload,named',
    [(PlantedPayload, 'exec'), (PlantedShellCommand, 'system')],
)
def test_planted_pickle_is_refused_by_every_loading_path(
    payload, named, tmp_path
):
    marker = tmp_path / 'ran'
    evil = str(plant(tmp_path / 'evil.pth', marker, payload))
    attempts = [
        lambda: read_checkpoint(evil),
        lambda: CheckpointLoader.load_checkpoint(evil, 'cpu'),
        lambda: load_checkpoint(nn.Linear(2, 2), evil),
        # mmengine's PretrainedInit, as any init_cfg of a non-mmmetaformer
        # module does it
        lambda: BaseModule(
            init_cfg=dict(type='Pretrained', checkpoint=evil)
        ).init_weights(),
        # our backbones' init_cfg
        lambda: MODELS.build(
            dict(
                type='PoolFormer',
                arch='s12',
                init_cfg=dict(type='Pretrained', checkpoint=evil),
            )
        ).init_weights(),
    ]
    for attempt in attempts:
        with pytest.raises(UnsafeCheckpointError) as err:
            attempt()
        message = str(err.value)
        assert evil in message and named in message
        assert 'Nothing in the file was run' in message
        assert (
            "weights_only=False); torch.save({'state_dict': "
            "c.get('state_dict', c)}, 'trusted.pth')"
        ) in message
    assert not marker.exists()


def test_getattr_reaches_only_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'meta': {'x': HistoryBufferUpdate()}}, path)
    with pytest.raises(UnsafeCheckpointError, match="'update'"):
        read_checkpoint(path)


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local http server over a folder, and a fresh torch hub cache."""
    root = tmp_path / 'served'
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    yield root, f'http://127.0.0.1:{server.server_port}', requests
    server.shutdown()


def test_urls_are_fetched_once_through_checkpoint_loader(http_root, tmp_path):
    root, url, requests = http_root
    torch.save({'state_dict': {'w': torch.ones(3)}}, root / 'good.pth')
    for _ in range(2):
        loaded = read_checkpoint(f'{url}/good.pth')
        assert torch.equal(loaded['state_dict']['w'], torch.ones(3))
    assert requests == ['/good.pth']  # the second read used the cache
    marker = tmp_path / 'ran'
    plant(root / 'evil.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match=f'{url}/evil.pth'):
        read_checkpoint(f'{url}/evil.pth')
    assert not marker.exists()


# --- safetensors metadata ---------------------------------------------------


def test_safetensors_metadata_is_kept(tmp_path):
    from safetensors.torch import save_file

    tensors = {'stem.conv.weight': torch.randn(2, 3, 7, 7)}
    save_file(
        tensors,
        tmp_path / 'with.safetensors',
        metadata={'mmmetaformer_format': '1', 'source': 'x.pth'},
    )
    loaded = read_checkpoint(tmp_path / 'with.safetensors')
    assert loaded['meta'] == {'mmmetaformer_format': '1', 'source': 'x.pth'}
    assert torch.equal(
        loaded['state_dict']['stem.conv.weight'], tensors['stem.conv.weight']
    )
    save_file(tensors, tmp_path / 'without.safetensors')
    assert list(read_checkpoint(tmp_path / 'without.safetensors')) == [
        'stem.conv.weight'
    ]


def test_converted_safetensors_are_recognised_as_ours(tmp_path):
    """The converter's metadata marks the file as native; it used to be
    dropped on read, and the file taken for a timm one."""
    backbone = MODELS.build(
        dict(type='PoolFormer', arch=TINY_ARCH, out_norm_cfg=None)
    )
    torch.save(backbone.state_dict(), tmp_path / 'timm_style.pth')
    converter = load_tool('convert_checkpoint.py')
    assert (
        converter.main(
            [
                str(tmp_path / 'timm_style.pth'),
                str(tmp_path / 'ours.safetensors'),
                '--check-config',
                str(tiny_backbone_config(tmp_path, 'PoolFormer')),
            ]
        )
        == 0
    )
    loaded = read_checkpoint(tmp_path / 'ours.safetensors')
    assert loaded['meta']['mmmetaformer_format'] == '1'
    _, fmt, _ = to_native(loaded)
    assert fmt == 'mmmetaformer'


# --- strict evaluation in process -----------------------------------------


def test_only_batchnorm_step_counters_may_be_missing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = model.state_dict()
    del state['1.num_batches_tracked']
    check_model_fits(model, {'state_dict': state}, 'old.pth')
    del state['1.running_var']
    state['2.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        check_model_fits(model, {'state_dict': state}, 'old.pth')
    message = str(err.value)
    assert (
        "1 of the model's 7 tensors are not in it (1.running_var)" in message
    )
    assert '1 of its 6 tensors are not in the model (2.weight)' in message


# --- through the tools ------------------------------------------------------


@pytest.fixture(scope='module')
def toy_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('tools')
    make_coco(
        cwd / 'data' / 'toy_coco',
        num_train=2,
        num_val=1,
        img_size=64,
        seed=0,
        max_objects=2,
    )
    return cwd


@pytest.fixture(scope='module')
def det_config(toy_cwd):
    """The toy RetinaNet with a tiny backbone and heads: the tools' reading
    and refusing does not depend on the model's size (its checkpoints
    here are about 1 MB instead of 50)."""
    return tiny_config(toy_cwd, 'retinanet')


@pytest.fixture(scope='module')
def toy_checkpoints(toy_cwd, det_config):
    """An exact checkpoint of the tiny toy RetinaNet, a mismatched one, and
    a planted pickle; the marker file the pickle would write."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(det_config)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    state_dict = model.state_dict()
    exact = toy_cwd / 'exact.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': state_dict}, exact)
    # A classifier's weights given to the detector: nothing matches.
    mismatched = toy_cwd / 'mismatched.pth'
    torch.save(
        {
            'state_dict': {
                f'head.fc{i}.weight': torch.zeros(2, 2) for i in range(7)
            }
        },
        mismatched,
    )
    marker = toy_cwd / 'ran'
    evil = plant(toy_cwd / 'evil.pth', marker)
    return exact, mismatched, evil, marker


@pytest.fixture(scope='module')
def hostile_checkpoints(toy_cwd, toy_checkpoints):
    """A TorchScript archive (and the file its code would write), a zip
    with a member outside its folder, and the exact checkpoint with one
    weight replaced by an int."""
    script_marker = toy_cwd / 'script_marker'
    script = plant_torchscript(toy_cwd / 'script.pth', script_marker)
    outside = toy_cwd / 'outside.pth'
    outside.write_bytes(toy_checkpoints[0].read_bytes())
    rewrite_zip(outside, extra=[('../outside.txt', b'x')])
    state_dict = torch.load(toy_checkpoints[0], weights_only=True)[
        'state_dict'
    ]
    state_dict['bbox_head.retina_cls.weight'] = 3
    int_entry = toy_cwd / 'int_entry.pth'
    torch.save({'state_dict': state_dict}, int_entry)
    return dict(
        script=script,
        script_marker=script_marker,
        outside=outside,
        int_entry=int_entry,
    )


def run_forked_pairs(cwd, runs):
    """Run ``{name: (script, args)}`` two at a time; ``{name: result}``."""
    results, items = {}, list(runs.items())
    for i in range(0, len(items), 2):
        started = [
            (
                name,
                ForkedTool(
                    script, *args, cwd=cwd, log_path=cwd / f'{name}.log'
                ),
            )
            for name, (script, args) in items[i : i + 2]
        ]
        for name, run in started:
            results[name] = run.wait()
    return results


@pytest.fixture(scope='module')
def tool_results(toy_cwd, det_config, toy_checkpoints, hostile_checkpoints):
    exact, mismatched, evil, _ = toy_checkpoints
    script = hostile_checkpoints['script']
    image = next((toy_cwd / 'data' / 'toy_coco' / 'val2017').glob('*.jpg'))
    auto_dir = toy_cwd / 'work_auto'
    auto_dir.mkdir()
    (auto_dir / 'last_checkpoint').write_text(str(evil))

    def tools(checkpoint, tag):
        return {
            f'test_{tag}': (
                'test.py',
                [
                    det_config,
                    checkpoint,
                    '--work-dir',
                    toy_cwd / f'work_test_{tag}',
                    '--cfg-options',
                    *SMALL,
                ],
            ),
            f'infer_{tag}': (
                'infer.py',
                [
                    image,
                    det_config,
                    checkpoint,
                    '--out',
                    toy_cwd / f'{tag}.jpg',
                ],
            ),
            f'benchmark_{tag}': (
                'analysis/benchmark.py',
                [
                    det_config,
                    checkpoint,
                    '--image-size',
                    '64x64',
                    '--num-images',
                    '1',
                    '--warmup',
                    '0',
                ],
            ),
        }

    runs = dict(tools(evil, 'evil'), **tools(mismatched, 'mismatched'))
    runs.update(
        convert_evil=('convert_checkpoint.py', [evil, toy_cwd / 'out.pth']),
        resume_path_evil=(
            'train.py',
            [
                det_config,
                '--work-dir',
                toy_cwd / 'work_resume',
                '--resume',
                evil,
                '--cfg-options',
                *SMALL,
            ],
        ),
        resume_auto_evil=(
            'train.py',
            [
                det_config,
                '--work-dir',
                auto_dir,
                '--resume',
                '--cfg-options',
                *SMALL,
            ],
        ),
        stock_mmdet_test_evil=(
            MMDET_TEST_TOOL,
            [
                det_config,
                evil,
                '--work-dir',
                toy_cwd / 'work_stock',
                '--cfg-options',
                *SMALL,
            ],
        ),
        test_script=(
            'test.py',
            [
                det_config,
                script,
                '--work-dir',
                toy_cwd / 'work_test_script',
                '--cfg-options',
                *SMALL,
            ],
        ),
        infer_script=(
            'infer.py',
            [image, det_config, script, '--out', toy_cwd / 'script.jpg'],
        ),
        convert_script=(
            'convert_checkpoint.py',
            [script, toy_cwd / 'script_out.pth'],
        ),
        resume_path_script=(
            'train.py',
            [
                det_config,
                '--work-dir',
                toy_cwd / 'work_resume_script',
                '--resume',
                script,
                '--cfg-options',
                *SMALL,
            ],
        ),
        stock_mmdet_test_script=(
            MMDET_TEST_TOOL,
            [
                det_config,
                script,
                '--work-dir',
                toy_cwd / 'work_stock_script',
                '--cfg-options',
                *SMALL,
            ],
        ),
        test_outside=(
            'test.py',
            [
                det_config,
                hostile_checkpoints['outside'],
                '--work-dir',
                toy_cwd / 'work_outside',
                '--cfg-options',
                *SMALL,
            ],
        ),
        test_int_entry=(
            'test.py',
            [
                det_config,
                hostile_checkpoints['int_entry'],
                '--work-dir',
                toy_cwd / 'work_int_entry',
                '--cfg-options',
                *SMALL,
            ],
        ),
        # score_thr 0: random weights score every box near the 0.01 prior
        test_exact=(
            'test.py',
            [
                det_config,
                exact,
                '--work-dir',
                toy_cwd / 'work_exact',
                '--cfg-options',
                *SMALL,
                'model.test_cfg.score_thr=0.0',
            ],
        ),
    )
    return run_forked_pairs(toy_cwd, runs)


EVIL_RUNS = [
    'test_evil',
    'infer_evil',
    'benchmark_evil',
    'convert_evil',
    'resume_path_evil',
    'resume_auto_evil',
]


@pytest.mark.parametrize('name', EVIL_RUNS)
def test_tools_refuse_a_planted_pickle(name, tool_results, toy_checkpoints):
    result = tool_results[name]
    evil, marker = toy_checkpoints[2], toy_checkpoints[3]
    assert result.returncode == 2, result.output[-3000:]
    assert f'error: {evil} was refused' in result.output
    assert 'Traceback' not in result.output
    assert not marker.exists()


def test_stock_mmdet_test_tool_refuses_a_planted_pickle(
    tool_results, toy_checkpoints
):
    """mmdet's own tools/test.py reads load_from through CheckpointLoader,
    made safe by the config's custom_imports of mmmetaformer (the forked
    runs do not have mmmetaformer imported before they start)."""
    result = tool_results['stock_mmdet_test_evil']
    assert result.returncode != 0
    assert 'UnsafeCheckpointError' in result.output
    assert not toy_checkpoints[3].exists()


@pytest.mark.parametrize('tool', ['test', 'infer', 'benchmark'])
def test_tools_refuse_a_checkpoint_that_does_not_fit(
    tool, tool_results, toy_checkpoints
):
    result = tool_results[f'{tool}_mismatched']
    assert result.returncode == 2, result.output[-3000:]
    assert (
        f'error: {toy_checkpoints[1]} does not fit RetinaNet: '
        in result.output
    )
    assert (
        'tensors are not in it (backbone.stem.conv.weight, ' in result.output
    )
    assert (
        '7 of its 7 tensors are not in the model (head.fc0.weight, '
        in result.output
    )
    assert 'Traceback' not in result.output
    assert 'coco/bbox_mAP' not in result.output
    assert '| config |' not in result.output  # benchmark's table
    assert 'wrote' not in result.output  # infer's picture


def test_test_tool_evaluates_a_checkpoint_that_fits(tool_results):
    result = tool_results['test_exact']
    assert result.returncode == 0, result.output[-3000:]
    assert "The checkpoint holds exactly the model's tensors" in result.output
    assert 'coco/bbox_mAP' in result.output


# --- TorchScript archives ---------------------------------------------------


class FileWriter(nn.Module):
    """A TorchScript module whose ``__setstate__`` writes 'ran' into the
    file ``target`` (through a shared mapping): loading it runs code."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = torch.zeros(3, dtype=torch.uint8)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:  # noqa: UP006
        return self.target, self.training

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]):  # noqa: UP006
        self.target = state[0]
        self.training = state[1]
        written = torch.from_file(state[0], True, 3, dtype=torch.uint8)
        written.copy_(torch.tensor([114, 97, 110], dtype=torch.uint8))
        self.written = written  # kept, or TorchScript drops the write


def plant_torchscript(path, marker):
    """A ``.pth`` that is a TorchScript archive; ``marker`` holds 3 zero
    bytes until the archive's code overwrites them."""
    marker.write_bytes(b'\0\0\0')
    torch.jit.script(FileWriter(str(marker))).save(str(path))
    return path


def test_torchscript_payload_is_real(tmp_path):
    marker = tmp_path / 'marker'
    torch.jit.load(str(plant_torchscript(tmp_path / 'script.pth', marker)))
    assert marker.read_bytes() == b'ran'


def test_torchscript_archive_is_refused_by_every_loading_path(tmp_path):
    marker = tmp_path / 'marker'
    script = str(plant_torchscript(tmp_path / 'script.pth', marker))
    attempts = [
        lambda: read_checkpoint(script),
        lambda: CheckpointLoader.load_checkpoint(script, 'cpu'),
        lambda: load_checkpoint(nn.Linear(2, 2), script),
        lambda: BaseModule(
            init_cfg=dict(type='Pretrained', checkpoint=script)
        ).init_weights(),
        lambda: MODELS.build(
            dict(
                type='PoolFormer',
                arch='s12',
                init_cfg=dict(type='Pretrained', checkpoint=script),
            )
        ).init_weights(),
    ]
    for attempt in attempts:
        with pytest.raises(UnsafeCheckpointError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith(
            f'{script} was refused: it is a TorchScript archive (it holds '
        )
        assert 'Nothing in the file was run' in message
        assert '\n' not in message
    assert marker.read_bytes() == b'\0\0\0'


def rewrite_zip(path, edit_pickle=None, extra=()):
    """Rewrite the zip checkpoint ``path``: ``edit_pickle(bytes)`` on its
    ``data.pkl``, and ``(name, bytes)`` members added."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, 'w') as archive:
        for info, data in members:
            if edit_pickle and info.filename.endswith('/data.pkl'):
                data = edit_pickle(data)
            archive.writestr(info, data)
        for name, data in extra:
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    'member', ['../outside.txt', '/etc/outside.txt', 'other/data.pkl']
)
def test_zip_member_outside_the_archive_is_refused(member, tmp_path):
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, path)
    rewrite_zip(path, extra=[(member, b'x')])
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert (
        f'its zip member {member!r} lies outside the archive folder '
        "'model'/" in str(err.value)
    )


# --- the numpy entries against crafted payloads -----------------------------


class Reduced:
    """Pickles as ``function(*args)``, then ``state`` set on the result."""

    def __init__(self, function, args, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (
            (self.function, self.args)
            if self.state is None
            else (self.function, self.args, self.state)
        )


PLAIN_F8_STATE = (3, '<', None, None, None, -1, -1, 0)
OBJECT_DTYPE = Reduced(
    np.dtype, ('O', False, True), (3, '|', None, None, None, -1, -1, 0)
)
F8 = Reduced(np.dtype, ('f8', False, True), PLAIN_F8_STATE)


def array_of(state):
    return Reduced(
        np.core.multiarray._reconstruct, (np.ndarray, (0,), b'b'), state
    )


CRAFTED = {
    # builds an object dtype, drops its flags, then reads 8 bytes as a
    # pointer: a segfault with numpy's own objects
    'object scalar': (
        Reduced(np.core.multiarray.scalar, (OBJECT_DTYPE, b'A' * 8)),
        "dtype('O'",
    ),
    'dtype flags': (
        Reduced(
            np.dtype,
            ('f8', False, True),
            (3, '<', None, None, None, -1, -1, 63),
        ),
        'numpy dtype state',
    ),
    'dtype fields': (
        Reduced(
            np.dtype,
            ('f8', False, True),
            (3, '<', None, ('a',), {'a': (F8, 8)}, 8, 1, 0),
        ),
        'numpy dtype state',
    ),
    'aligned dtype': (
        Reduced(np.dtype, ('f8', True, True), PLAIN_F8_STATE),
        "dtype('f8', True, True)",
    ),
    'array larger than its bytes': (
        array_of((1, (1000,), F8, False, b'\0' * 8)),
        'numpy array state',
    ),
    'array of objects': (
        array_of((1, (1,), OBJECT_DTYPE, False, [print])),
        "dtype('O'",
    ),
    'negative shape': (
        array_of((1, (-1,), F8, False, b'\0' * 8)),
        'numpy array state',
    ),
    'bytes of a chosen size': (Reduced(bytes, (10**12,)), 'bytes('),
    '_reconstruct of another class': (
        Reduced(np.core.multiarray._reconstruct, (np.dtype, (0,), b'b')),
        'numpy _reconstruct',
    ),
    'ndarray called with a buffer': (
        Reduced(np.ndarray, ((1,), F8, b'\0' * 8, 0, (8,))),
        'numpy.ndarray(...) call',
    ),
    'scalar shorter than its dtype': (
        Reduced(np.core.multiarray.scalar, (F8, b'AAAA')),
        'numpy scalar',
    ),
    'history buffer running code': (
        Reduced(HistoryBuffer, (), {'_log_history': PlantedPayload('x')}),
        'exec',
    ),
}


@pytest.mark.parametrize('name', list(CRAFTED))
def test_crafted_payload_against_each_allowlist_entry_is_refused(
    name, tmp_path
):
    payload, named = CRAFTED[name]
    path = tmp_path / 'crafted.pth'
    torch.save({'meta': {'x': payload}, 'state_dict': {}}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert named in str(err.value) and '\n' not in str(err.value)
    # registered process-wide, the entries keep torch's own load safe too
    with pytest.raises(
        pickle.UnpicklingError,
        match=re.escape(named) if TORCH_LOAD_IS_SAFE else '',
    ):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize('core', ['core', '_core'])
def test_numpy_1_and_numpy_2_pickles_both_read(core, tmp_path):
    """numpy 1 names its pickling functions numpy.core.multiarray.*, numpy 2
    numpy._core.multiarray.*: a checkpoint of either stack reads on both."""
    checkpoint = {
        'meta': {
            'seed': np.int64(42),
            'lr': np.float32(0.5),
            'palette': np.arange(6, dtype=np.uint8).reshape(2, 3),
            'fortran': np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            'big_endian': np.arange(3, dtype='>i4'),
            'empty': np.zeros((0, 4), np.float16),
        },
        'state_dict': {'w': torch.ones(2)},
    }
    path = tmp_path / 'numpy.pth'
    torch.save(checkpoint, path)

    def rename(data):
        for old in (b'numpy.core.multiarray', b'numpy._core.multiarray'):
            data = data.replace(old, f'numpy.{core}.multiarray'.encode())
        return data

    assert f'numpy.{core}.multiarray'.encode() in zipfile.ZipFile(
        rewrite_zip(path, rename)
    ).read('numpy/data.pkl')
    loaded = read_checkpoint(path)
    # as numpy's own unpickling rebuilds them (it makes byte orders native)
    assert_same(loaded, pickle.loads(pickle.dumps(checkpoint)))
    assert loaded['meta']['fortran'].flags.f_contiguous
    assert loaded['meta']['palette'].flags.writeable


SCRIPT_RUNS = [
    'test_script',
    'infer_script',
    'convert_script',
    'resume_path_script',
]


@pytest.mark.parametrize('name', SCRIPT_RUNS)
def test_tools_refuse_a_torchscript_archive(
    name, tool_results, hostile_checkpoints
):
    result = tool_results[name]
    assert result.returncode == 2, result.output[-3000:]
    assert (
        f'error: {hostile_checkpoints["script"]} was refused: it is a '
        'TorchScript archive'
    ) in result.output
    assert 'Traceback' not in result.output
    assert hostile_checkpoints['script_marker'].read_bytes() == b'\0\0\0'
    assert not (
        hostile_checkpoints['script'].parent / 'script_out.pth'
    ).exists()


def test_stock_mmdet_test_tool_refuses_a_torchscript_archive(
    tool_results, hostile_checkpoints
):
    result = tool_results['stock_mmdet_test_script']
    assert result.returncode != 0
    assert 'TorchScript archive' in result.output
    assert hostile_checkpoints['script_marker'].read_bytes() == b'\0\0\0'


def test_test_tool_refuses_a_zip_member_outside_the_archive(
    tool_results, hostile_checkpoints
):
    result = tool_results['test_outside']
    assert result.returncode == 2, result.output[-3000:]
    assert (
        f'error: {hostile_checkpoints["outside"]} was refused: its zip '
        "member '../outside.txt' lies outside"
    ) in result.output
    assert 'Traceback' not in result.output


def test_test_tool_refuses_a_weight_that_is_not_a_tensor(
    tool_results, hostile_checkpoints
):
    result = tool_results['test_int_entry']
    assert result.returncode == 2, result.output[-3000:]
    assert (
        f'error: {hostile_checkpoints["int_entry"]} does not fit '
        'RetinaNet: 1 cannot be loaded into the model '
        '(bbox_head.retina_cls.weight (not a tensor: int))'
    ) in result.output
    assert 'coco/bbox_mAP' not in result.output
    assert 'Traceback' not in result.output


def test_integer_weights_for_float_parameters_are_a_mismatch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = model.state_dict()
    state['0.weight'] = state['0.weight'].to(torch.int8)
    state['1.num_batches_tracked'] = torch.tensor(3.0)
    state['1.bias'] = 'zeros'
    with pytest.raises(CheckpointMismatchError) as err:
        check_model_fits(model, {'state_dict': state}, 'cast.pth')
    assert (
        '3 cannot be loaded into the model (0.weight (checkpoint '
        'torch.int8, model torch.float32), 1.bias (not a tensor: str),'
        ' 1.num_batches_tracked (checkpoint torch.float32, model '
        'torch.int64))'
    ) in str(err.value)
    # a lower float precision represents the parameter
    state = {
        k: v.half() if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    check_model_fits(model, {'state_dict': state}, 'half.pth')
