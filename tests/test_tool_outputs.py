"""The tools never destroy data, check weights for what they are, and turn
every error of the user's input into one line (exit status 2).

Tools run in this process through their ``main(argv)`` wrapped in
``run_tool``, as ``python tools/X.py`` runs them: a user error exits 2 with
one ``error:`` line and no traceback. Full disks are an ``RLIMIT_FSIZE``
limit (with ``SIGXFSZ`` ignored a write past it fails with ``EFBIG``, as on
a full disk with ``ENOSPC``). The training states come from one real
iteration of the toy Semantic FPN config.
"""

import contextlib
import hashlib
import importlib.util
import io
import resource
import signal

from mmmetaformer_tools.launch import run_tool
from mmmetaformer_tools.toy import make_ade20k, make_coco

import pytest
import torch

import mmmetaformer  # noqa: F401  (registers the hooks and backbones)
from mmmetaformer.checkpoint import NATIVE_META_KEY, read_checkpoint
from mmmetaformer.engine.checkpoint_hooks import (
    OutputWriteError,
    atomic_output,
)
from mmmetaformer.registry import MODELS

from .helpers import REPO_ROOT, TINY_ARCH, tiny_config

SEG_CONFIG = str(
    REPO_ROOT / 'configs/toy/semantic_fpn_poolformer_s12_toy_ade20k.py'
)
# one 64 px scene per iteration, no validation; checkpoint every iteration
SEG_SMALL = [
    'train_dataloader.batch_size=1',
    'train_dataloader.dataset.indices=1',
    'val_dataloader.dataset.indices=1',
    'train_cfg.val_interval=100',
    'train_cfg.val_begin=2',
    'train_cfg.max_iters=1',
    'default_hooks.checkpoint.interval=1',
]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'tool_{name}', REPO_ROOT / 'tools' / f'{name}.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOLS = {name: load_tool(name) for name in ('train', 'test', 'infer')}
CONVERT = load_tool('convert_checkpoint')


def tool_stderr(function):
    """``(exit status, stderr)`` of ``run_tool(function)``. stderr is
    captured by replacing ``sys.stderr`` alone: pytest's ``capsys`` and
    ``capfd`` close their streams after a test, and mmengine's loggers keep
    the stream they were created with."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = run_tool(function)
        except SystemExit as exit_:
            status = exit_.code
    return status, stderr.getvalue()


def error_line(status, err):
    assert status == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def one_error_line(name, *argv):
    """Run ``tools/<name>.py argv`` as its ``__main__`` does; it must exit 2
    with exactly one ``error:`` line and no traceback. Returns the line."""
    return error_line(
        *tool_stderr(lambda: TOOLS[name].main([str(a) for a in argv]))
    )


def convert_error_line(*argv):
    """tools/convert_checkpoint.py returns its status; its one line."""
    status, err = tool_stderr(lambda: CONVERT.main([str(a) for a in argv]))
    line = error_line(status, err)
    assert err.strip() == line
    return line


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# One writer: whole files or nothing
# --------------------------------------------------------------------------


class FileSizeLimit:
    """Files of this process may not grow past ``limit`` bytes inside the
    ``with`` block."""

    def __init__(self, limit):
        self.limit = limit

    def __enter__(self):
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
        signal.signal(signal.SIGXFSZ, self.handler)


def test_atomic_output_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    path = tmp_path / 'file.bin'
    path.write_bytes(b'old')
    with pytest.raises(
        OutputWriteError,
        match=(
            f'^Could not write {path}: File too large .OSError.; the partial '
            'file was removed and file.bin was left as it was$'
        ),
    ):
        with FileSizeLimit(1000), atomic_output(path) as partial:
            with open(partial, 'wb') as f:
                f.write(b'x' * 5000)
    with pytest.raises(KeyError):  # the writer's own failure
        with atomic_output(path) as partial:
            with open(partial, 'wb') as f:
                f.write(b'new, half')
            raise KeyError('the writer failed')
    assert path.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file.bin']
    with atomic_output(path) as partial, open(partial, 'wb') as f:
        f.write(b'new')
    assert path.read_bytes() == b'new'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file.bin']


def config_files():
    return sorted(
        p
        for p in (REPO_ROOT / 'configs').rglob('*.py')
        if p.parent.name != '_base_'
    )


def file_settings(path):
    """What a config file sets itself (``helpers.own_settings``), with
    ``_base_.NAME`` read from its local bases' own settings (the toy
    configs take their values from ``configs/_base_/toy_*.py`` so)."""
    import ast

    from .helpers import own_settings

    text = path.read_text()
    bases = next(
        (
            ast.literal_eval(node.value)
            for node in ast.parse(text).body
            if isinstance(node, ast.Assign)
            and getattr(node.targets[0], 'id', None) == '_base_'
        ),
        [],
    )
    bases = [bases] if isinstance(bases, str) else list(bases)
    if '_base_.' not in text:
        return own_settings(path), bases
    names = {}
    for base in bases:
        if '::' not in base:
            names.update(file_settings(path.parent / base)[0])
    namespace = {'__base_vars__': type('BaseVars', (), names)}
    exec(
        compile(text.replace('_base_.', '__base_vars__.'), str(path), 'exec'),
        namespace,
    )
    return {
        k: v for k, v in namespace.items() if not k.startswith('__')
    }, bases


def checkpoint_hook_type(path):
    """``default_hooks.checkpoint.type`` of the config at ``path`` as
    mmengine merges it: the file's own, else its bases' (mmengine refuses a
    key two bases set). An ``mmdet::``/``mmseg::`` base brings their
    default runtime's plain ``CheckpointHook``."""
    own, bases = file_settings(path)
    hook = own.get('default_hooks', {}).get('checkpoint', {})
    if 'type' in hook or hook.get('_delete_'):
        return hook.get('type')
    found = {
        checkpoint_hook_type(path.parent / base)
        if '::' not in base
        else 'CheckpointHook'
        for base in bases
    } - {None}
    assert len(found) <= 1, (path, found)  # mmengine: a key in two bases
    return found.pop() if found else None


def test_every_config_writes_checkpoints_atomically():
    """Every config in configs/ resolves ``default_hooks.checkpoint`` to
    ``AtomicCheckpointHook``: mmengine's plain ``CheckpointHook`` leaves a
    truncated ``iter_N.pth`` on a full disk or a kill. Resolving every
    config through its ``mmdet::``/``mmseg::`` chain takes 1-2 s each, so
    the files' own settings are merged here, and two configs are resolved
    by mmengine to confirm the merge."""
    from mmengine.config import Config

    plain = [
        str(p.relative_to(REPO_ROOT))
        for p in config_files()
        if checkpoint_hook_type(p) != 'AtomicCheckpointHook'
    ]
    assert not plain, f'configs with a plain CheckpointHook: {plain}'
    for path in (
        'configs/cascade_mask_rcnn_caformer_s18_coco.py',
        'configs/toy/upernet_convformer_s18_toy_ade20k.py',
    ):
        cfg = Config.fromfile(str(REPO_ROOT / path))
        assert (
            cfg.default_hooks.checkpoint.type
            == checkpoint_hook_type(REPO_ROOT / path)
            == 'AtomicCheckpointHook'
        )
        assert cfg.default_hooks.checkpoint.interval > 0


def test_the_train_tool_makes_a_plain_checkpoint_hook_atomic():
    from mmengine.config import Config

    cfg = Config(
        dict(
            default_hooks=dict(
                checkpoint=dict(type='CheckpointHook', interval=3)
            )
        )
    )
    TOOLS['train'].use_atomic_checkpoints(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='AtomicCheckpointHook', interval=3
    )


# --------------------------------------------------------------------------
# tools/convert_checkpoint.py
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def s12_weights():
    """PoolFormer-S12 weights in our own format (zeros: only names, shapes
    and dtypes matter to the converter). Each tensor is a view of one zero
    (stride 0), so a file of them is kilobytes, not 45 MB; the reader
    takes any strides. ``.contiguous()`` gives the full-size tensors."""
    with torch.device('meta'):
        model = MODELS.build(dict(type='PoolFormer', arch='s12'))
    return {
        k: torch.zeros((), dtype=v.dtype).expand(v.shape)
        for k, v in model.state_dict().items()
    }


def native(state_dict):
    return {'meta': {NATIVE_META_KEY: 1}, 'state_dict': state_dict}


def test_in_place_conversion_onto_a_full_disk_keeps_the_source(tmp_path):
    """SRC = DST: the source is read whole, the output written aside; a
    write that fails leaves the source byte for byte, and no partial. A
    tiny PoolFormer (~0.6 MB) checked against a tiny config's backbone."""
    src = tmp_path / 'weights.pth'
    torch.manual_seed(0)
    weights = MODELS.build(
        dict(type='PoolFormer', arch=TINY_ARCH)
    ).state_dict()
    torch.save(native(weights), src)
    config = tiny_config(tmp_path, 'semantic_fpn')
    files = sorted(p.name for p in tmp_path.iterdir())
    before = digest(src)
    # the converted file (as large as the source) outgrows the limit
    with FileSizeLimit(src.stat().st_size // 2):
        line = convert_error_line(src, src, '--check-config', config)
    assert line == (
        f'error: Could not write {src}: File too large '
        '(OSError); the partial file was removed and weights.pth '
        'was left as it was'
    )
    assert digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    # with room, in place works and gives our format
    assert (
        CONVERT.main([str(src), str(src), '--check-config', str(config)]) == 0
    )
    converted = read_checkpoint(src)
    assert converted['meta']['source_format'] == 'mmmetaformer'
    assert set(converted['state_dict']) == set(weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == files


@pytest.mark.parametrize('dtype', [torch.int64, torch.bool, torch.complex64])
def test_weights_of_a_dtype_the_loader_refuses_are_not_written(
    s12_weights, dtype, tmp_path
):
    key = 'stages.0.blocks.0.mlp.fc1.weight'
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(
        native(dict(s12_weights, **{key: s12_weights[key].to(dtype)})), src
    )
    line = convert_error_line(src, dst, '--arch', 'poolformer_s12')
    assert 'fit no backbone' in line
    assert f'{key} (checkpoint {dtype}, model torch.float32)' in line
    assert not dst.exists()


def test_a_weight_that_is_a_number_is_one_line(s12_weights, tmp_path):
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(dict(s12_weights, **{'stem.conv.weight': 3}), src)
    line = convert_error_line(src, dst)
    assert 'stem.conv.weight (not a tensor: int)' in line
    assert not dst.exists()


def test_destination_that_is_a_folder_or_under_a_missing_one(
    s12_weights, tmp_path
):
    src = tmp_path / 'src.pth'
    torch.save(native(s12_weights), src)
    line = convert_error_line(src, tmp_path)
    assert line == (
        f'error: DST {tmp_path} is a folder; give the path of a '
        'file (in it, or elsewhere)'
    )
    missing = tmp_path / 'no' / 'such' / 'out.pth'
    line = convert_error_line(src, missing)
    assert line == (
        f'error: cannot write DST {missing}: the folder '
        f'{tmp_path / "no" / "such"} does not exist; create it '
        'first'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ['src.pth']


# --------------------------------------------------------------------------
# tools/train.py: every bad value one line, before anything runs
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """The toy ADE20K (two 64 px scenes), the toy Semantic FPN config with
    a tiny PoolFormer and heads (``tiny_config``: its checkpoints are about
    a MB), and its training state after one iteration."""
    import os

    root = tmp_path_factory.mktemp('tool_outputs')
    make_ade20k(
        root / 'data' / 'toy_ade20k',
        num_train=2,
        num_val=1,
        img_size=64,
        seed=0,
    )
    # Resolved once into one file without bases: the tools parse it in a
    # fraction of the time the mmseg:: chain takes.
    config = tiny_config(root, 'semantic_fpn')
    cwd = os.getcwd()
    os.chdir(root)
    try:
        TOOLS['train'].main(
            [
                str(config),
                '--work-dir',
                str(root / 'run'),
                '--cfg-options',
                *SEG_SMALL,
                'experiment_name=tool_outputs_state',
            ]
        )
    finally:
        os.chdir(cwd)
    state = root / 'run' / 'iter_1.pth'
    assert state.is_file()
    return root, state, str(config)


CONFIG = None  # the tiny config, set by in_toy


@pytest.fixture
def in_toy(toy, monkeypatch):
    """Run in the toy's folder (the configs name data/toy_ade20k)."""
    monkeypatch.chdir(toy[0])
    monkeypatch.setitem(globals(), 'CONFIG', toy[2])
    return toy


_runs = iter(range(10**6))


def train_error(*options, resume=None):
    """tools/train.py on the toy config with ``options``: its one line."""
    argv = [CONFIG, '--work-dir', 'work']
    if resume is not None:
        argv += ['--resume', resume]
    return one_error_line(
        'train',
        *argv,
        '--cfg-options',
        *SEG_SMALL,
        *options,
        f'experiment_name=tool_outputs_{next(_runs)}',
    )


@pytest.mark.parametrize(
    'option, message',
    [
        (
            'model.backbone.out_indices=(7,)',
            'PoolFormer out_indices (7,) must be distinct stage indices in '
            '0..3',
        ),
        (
            'model.backbone.frozen_stages=9',
            'PoolFormer frozen_stages=9 must be an int in -1..4',
        ),
        ('model.backbone.drop_path_rate=-1', 'drop_path_rate=-1'),
        ('model.backbone.arch=s99', "'s99'"),
        ('model.backbone.colour=1', "got unknown arguments ['colour']"),
        # mmseg's EncoderDecoder hands model.pretrained to the backbone
        ('model.pretrained=r50.pth', "PoolFormer got pretrained='r50.pth'"),
    ],
)
def test_invalid_backbone_values_are_one_line(in_toy, option, message):
    line = train_error(option)
    assert line.startswith('error: model.backbone: '), line
    assert message in line


def test_input_channels_that_the_weights_do_not_have(in_toy):
    """in_channels=1 with ImageNet-style 3-channel weights: the weights do
    not fit, named in one line."""
    root, state, tiny = in_toy
    backbone = root / 'backbone.pth'
    if not backbone.exists():
        weights = read_checkpoint(state)['state_dict']
        torch.save(
            native(
                {
                    k[len('backbone.') :]: v
                    for k, v in weights.items()
                    if k.startswith('backbone.')
                }
            ),
            backbone,
        )
    config = root / 'one_channel.py'
    config.write_text(
        f'_base_ = [{tiny!r}]\n'
        'model = dict(backbone=dict(in_channels=1, init_cfg=dict(\n'
        "    _delete_=True, type='Pretrained',\n"
        f'    checkpoint={str(backbone)!r})))\n'
    )
    line = one_error_line(
        'train',
        config,
        '--work-dir',
        'work',
        '--cfg-options',
        *SEG_SMALL,
        'experiment_name=tool_outputs_channels',
    )
    assert (
        'stem.conv.weight (checkpoint (16, 3, 7, 7), model (16, 1, 7, 7))'
        in line
    ), line


@pytest.mark.parametrize(
    'option',
    ['optim_wrapper.optimizer.lr=nan', 'optim_wrapper.optimizer.lr=inf'],
)
def test_a_non_finite_learning_rate_is_one_line(in_toy, option):
    key, value = option.split('=')
    line = train_error(option)
    assert line == (
        f'error: {key}={float(value)} is not a finite number; '
        f'set it with --cfg-options {key}=<number>'
    )


def test_a_learning_rate_torch_refuses_is_one_line(in_toy):
    line = train_error('optim_wrapper.optimizer.lr=-1.0')
    assert line.startswith(
        'error: optim_wrapper: Invalid learning rate: -1.0'
    ), line


# --------------------------------------------------------------------------
# tools/train.py --resume: a training state of this model, or one line
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def training_state(toy):
    return read_checkpoint(toy[1])


def test_resume_from_weights_only(in_toy, training_state):
    path = in_toy[0] / 'weights_only.pth'
    torch.save({'state_dict': training_state['state_dict']}, path)
    line = train_error(resume=path)
    assert line == (
        f'error: --resume {path} is not a training state (it '
        'has no meta, optimizer); to start a new training from '
        f'its weights use --cfg-options load_from={path} instead'
    )


def test_resume_from_another_models_state(in_toy, training_state):
    path = in_toy[0] / 'other_model.pth'
    state = dict(training_state)
    state['state_dict'] = {
        k.replace('decode_head.', 'head.'): v
        for k, v in state['state_dict'].items()
    }
    torch.save(state, path)
    line = train_error(resume=path)
    assert line.startswith(
        f"error: --resume {path} holds another model's weights ("
    )
    assert 'missing (decode_head.' in line
    assert 'not in the model (head.' in line


def test_resume_with_other_parameter_groups(in_toy, training_state):
    path = in_toy[0] / 'other_groups.pth'
    groups = training_state['optimizer']['param_groups']
    state = dict(
        training_state,
        optimizer=dict(training_state['optimizer'], param_groups=groups[:-1]),
    )
    torch.save(state, path)
    line = train_error(resume=path)
    assert line == (
        f'error: --resume {path}: its optimizer has '
        f"{len(groups) - 1} parameter groups, this config's "
        f'{len(groups)} (another model or paramwise_cfg); resume '
        'from a checkpoint of this config'
    )


def test_resume_with_a_damaged_optimizer_state(in_toy, training_state):
    path = in_toy[0] / 'damaged_optimizer.pth'
    optimizer = training_state['optimizer']
    index = optimizer['param_groups'][0]['params'][0]
    param_state = dict(optimizer['state'][index], exp_avg=torch.zeros(1))
    state = dict(
        training_state,
        optimizer=dict(
            optimizer, state={**optimizer['state'], index: param_state}
        ),
    )
    torch.save(state, path)
    line = train_error(resume=path)
    assert line.startswith(
        f'error: --resume {path}: optimizer state '
        "'exp_avg' of backbone.stem.conv.weight has shape "
        '(1,), the parameter (16, 3, 7, 7)'
    ), line


# --------------------------------------------------------------------------
# tools/test.py and tools/infer.py refuse weights that are not numbers
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def nan_checkpoint(toy, training_state):
    path = toy[0] / 'nan.pth'
    torch.save(
        {
            'meta': training_state['meta'],
            'state_dict': {
                k: torch.full_like(v, float('nan'))
                if v.is_floating_point()
                else v
                for k, v in training_state['state_dict'].items()
            },
        },
        path,
    )
    return path


def test_test_refuses_non_finite_weights(in_toy, nan_checkpoint):
    line = one_error_line(
        'test',
        CONFIG,
        nan_checkpoint,
        '--work-dir',
        'work',
        '--cfg-options',
        'test_dataloader.dataset.indices=1',
        'experiment_name=tool_outputs_test_nan',
    )
    assert line.startswith(
        f'error: {nan_checkpoint}: tensor backbone.stem.conv.weight holds '
        '2352 non-finite values (nan or inf) of 2352, the first tensor that '
        'does'
    ), line
    assert line.endswith('(pass --allow-nonfinite to use them anyway)')


def test_infer_refuses_non_finite_weights(in_toy, nan_checkpoint):
    image = sorted(
        (in_toy[0] / 'data/toy_ade20k/images/validation').glob('*')
    )[0]
    line = one_error_line(
        'infer',
        image,
        CONFIG,
        nan_checkpoint,
        '--out-dir',
        'infer_out',
        '--device',
        'cpu',
    )
    assert 'tensor backbone.stem.conv.weight holds 2352 non-finite' in line
    assert not (in_toy[0] / 'infer_out' / 'vis').exists()


# --------------------------------------------------------------------------
# tools/test.py: --out and --show-dir files whole or not at all
# --------------------------------------------------------------------------


def written_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*'))


@pytest.fixture(scope='module')
def toy_detector(tmp_path_factory):
    """The toy COCO (two 64 px images) and the toy RetinaNet with a tiny
    PoolFormer and heads (``tiny_config``, its own random weights),
    flattened; returns ``(folder, config, checkpoint)``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    root = tmp_path_factory.mktemp('test_tool_det')
    make_coco(root / 'data' / 'toy_coco', num_train=1, num_val=2, img_size=64)
    config = tiny_config(root, 'retinanet')
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET_MODELS

    checkpoint = root / 'tiny.pth'
    torch.save(
        {'state_dict': DET_MODELS.build(cfg.model).state_dict()}, checkpoint
    )
    return root, str(config), checkpoint


def test_test_writes_detection_results_whole_or_not_at_all(
    toy_detector, monkeypatch
):
    """--out is mmdet's results pickle, complete; --show-dir one picture
    per image. On a full disk: one line, exit 2, no results file and no
    partial file."""
    from mmengine.fileio import load

    root, config, checkpoint = toy_detector
    monkeypatch.chdir(root)

    def test(out, *options):
        # stdout kept in memory: pytest's capture file is under the limit too
        with contextlib.redirect_stdout(io.StringIO()):
            return tool_stderr(
                lambda: TOOLS['test'].main(
                    [config, str(checkpoint), '--work-dir', 'work']
                    + ['--out', str(out), *options, '--cfg-options']
                    # every box the head returns, up to max_per_img
                    + ['model.test_cfg.score_thr=0']
                    + [f'experiment_name=det_{out.stem}']
                    # the latest visualizer of this process, which the hook
                    # draws with (not an earlier run's 'visualizer')
                    + [f'visualizer.name=det_{out.stem}']
                )
            )

    out, pictures = root / 'results' / 'det.pkl', root / 'pictures'
    metrics, err = test(out, '--show-dir', str(pictures))
    assert isinstance(metrics, dict), err[-3000:]
    assert 'coco/bbox_mAP' in metrics
    results = load(out)
    images = sorted(p.name for p in (root / 'data/toy_coco/val2017').iterdir())
    assert sorted(r['img_path'].rsplit('/', 1)[1] for r in results) == images
    for result in results:
        assert len(result['pred_instances']['scores']) == 100
        assert result['pred_instances']['bboxes'].shape == (100, 4)
    assert written_files(pictures) == images
    assert written_files(out.parent) == ['det.pkl']

    # a limit every log and config file stays under, the pickle does not
    others = max(
        p.stat().st_size for p in (root / 'work').rglob('*') if p.is_file()
    )
    assert out.stat().st_size > 2 * others, (out.stat().st_size, others)
    full = root / 'results' / 'full.pkl'
    with FileSizeLimit(out.stat().st_size // 2):
        line = error_line(*test(full))
    assert line == (
        f'error: Could not write {full}: File too large (OSError); the '
        'partial file was removed and full.pkl was left as it was'
    )
    assert written_files(out.parent) == ['det.pkl']


def test_test_writes_segmentation_label_maps_and_pictures(in_toy, tmp_path):
    """--out: each image's label map, as mmseg's IoUMetric(output_dir)
    writes it; --show-dir: each image's picture. Nothing partial."""
    import numpy as np
    from PIL import Image

    root, state, _ = in_toy
    maps, pictures = tmp_path / 'maps', tmp_path / 'pictures'
    metrics, err = tool_stderr(
        lambda: TOOLS['test'].main(
            [CONFIG, str(state), '--work-dir', 'work', '--out', str(maps)]
            + ['--show-dir', str(pictures), '--cfg-options']
            + ['experiment_name=tool_outputs_seg_out']
            # the latest visualizer of this process, which the hook draws with
            + ['visualizer.name=tool_outputs_seg_out']
        )
    )
    assert isinstance(metrics, dict), err[-3000:]
    assert 'mIoU' in metrics
    images = sorted((root / 'data/toy_ade20k/images/validation').iterdir())
    assert written_files(maps) == [f'{p.stem}.png' for p in images]
    for image in images:
        labels = np.asarray(Image.open(maps / f'{image.stem}.png'))
        assert labels.shape == Image.open(image).size[::-1]
        assert labels.dtype == np.uint8 and labels.max() < 150
    drawn = [
        p for p in written_files(pictures) if p.startswith('vis_data/vis_')
    ]
    assert drawn == ['vis_data/vis_image'] + [
        f'vis_data/vis_image/test_{p.name}_0.png' for p in images
    ]
    assert not [p for p in written_files(tmp_path) if 'partial' in p]


def test_test_refuses_a_label_map_folder_that_is_a_file(in_toy):
    root, state, _ = in_toy
    line = one_error_line('test', CONFIG, state, '--out', state)
    assert line == (
        f'error: --out {state} is a file; segmentation writes a label map '
        'per image into a folder: give a folder (created if needed)'
    )


def test_pictures_are_written_whole_or_not_at_all(tmp_path):
    """test.py's --show-dir writers: mmdet's visualizer drawing to a file
    (``AtomicPictureFiles`` mixed in) and the backend mmseg's pictures go
    to (``AtomicLocalVisBackend``). On a full disk: one line each, no
    picture, no partial file; with room, the whole picture."""
    from mmmetaformer_tools.result_files import write_pictures_atomically

    import cv2
    import numpy as np
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    from mmdet.registry import VISUALIZERS

    cfg = Config(
        dict(
            visualizer=dict(
                type='DetLocalVisualizer',
                vis_backends=[dict(type='LocalVisBackend')],
                name='tool_outputs_pictures',
                save_dir=str(tmp_path / 'backend'),
            )
        )
    )
    write_pictures_atomically(cfg, 'mmdet')
    visualizer = VISUALIZERS.build(cfg.visualizer)
    # noise: PNG cannot compress it below its 192 KiB
    picture = np.random.RandomState(0).randint(0, 256, (256, 256, 3), np.uint8)
    out_file = tmp_path / 'show' / 'scene.png'
    out_file.parent.mkdir()
    backend_file = tmp_path / 'backend/vis_data/vis_image/scene_3.png'

    def draw():
        visualizer.add_datasample(
            'scene', picture, None, draw_pred=False, out_file=str(out_file)
        )

    def record():
        visualizer.add_image('scene', picture, step=3)

    for write, path in ((draw, out_file), (record, backend_file)):
        with FileSizeLimit(2**16), pytest.raises(OutputWriteError) as error:
            write()
        assert str(error.value) == (
            f'Could not write {path}: File too large (OSError); the partial '
            f'file was removed and {path.name} was left as it was'
        )
        assert written_files(path.parent) == []
        write()
        assert written_files(path.parent) == [path.name]
        np.testing.assert_array_equal(
            cv2.imread(str(path))[..., ::-1], picture
        )


# --------------------------------------------------------------------------
# tools/infer.py on a segmentor: pictures and label maps, named by the image
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def classes_only_checkpoint(toy, training_state):
    """The toy's weights with classes in their meta but no palette."""
    classes = training_state['meta']['dataset_meta']['classes']
    path = toy[0] / 'classes_only.pth'
    torch.save(
        {
            'meta': {'dataset_meta': {'classes': classes}},
            'state_dict': training_state['state_dict'],
        },
        path,
    )
    return path, len(classes)


def test_infer_writes_segmentation_pictures_and_label_maps(
    in_toy, classes_only_checkpoint, tmp_path
):
    """Classes without a palette get fixed colours; every image has its
    picture in vis/ and its label map (class indices) in pred/<name>.png,
    and nothing partial or staged is left."""
    import numpy as np
    from PIL import Image

    checkpoint, num_classes = classes_only_checkpoint
    images = tmp_path / 'images'
    images.mkdir()
    for i, scene in enumerate(
        sorted((in_toy[0] / 'data/toy_ade20k/images').rglob('*.jpg'))[:2]
    ):
        (images / f'scene_{i}.jpg').write_bytes(scene.read_bytes())
    out = tmp_path / 'out'
    status, err = tool_stderr(
        lambda: TOOLS['infer'].main(
            [str(images), CONFIG, str(checkpoint), '--out-dir', str(out)]
            + ['--device', 'cpu']
        )
    )
    assert status is None, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['pred', 'vis']
    assert sorted(p.name for p in (out / 'vis').iterdir()) == [
        'scene_0.jpg',
        'scene_1.jpg',
    ]
    assert sorted(p.name for p in (out / 'pred').iterdir()) == [
        'scene_0.png',
        'scene_1.png',
    ]
    for i in range(2):
        labels = np.asarray(Image.open(out / 'pred' / f'scene_{i}.png'))
        size = Image.open(images / f'scene_{i}.jpg').size
        assert labels.shape == size[::-1]
        assert labels.dtype == np.uint8 and labels.max() < num_classes


def test_infer_refuses_a_palette_that_does_not_fit_the_classes(
    in_toy, training_state, tmp_path
):
    classes = training_state['meta']['dataset_meta']['classes']
    path = tmp_path / 'two_colours.pth'
    torch.save(
        {
            'meta': {
                'dataset_meta': {
                    'classes': classes,
                    'palette': [[0, 0, 0], [255, 255, 255]],
                }
            },
            'state_dict': training_state['state_dict'],
        },
        path,
    )
    image = sorted((in_toy[0] / 'data/toy_ade20k/images').rglob('*.jpg'))[0]
    line = one_error_line(
        'infer', image, CONFIG, path, '--out-dir', tmp_path / 'out'
    )
    assert line == (
        f'error: {path}: its meta has {len(classes)} classes but 2 palette '
        'colours; give one colour per class or none'
    )
    assert list((tmp_path / 'out').iterdir()) == []


# --------------------------------------------------------------------------
# tools/infer.py: options and outputs checked before any work
# --------------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path):
    """Two images of the same file name in different folders, listed."""
    import cv2
    import numpy as np

    paths = []
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / 'scene.png')
        cv2.imwrite(str(paths[-1]), np.zeros((8, 8, 3), np.uint8))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/scene.png\nb/scene.png\n')
    return listing, paths


def infer_error(*argv):
    return one_error_line(
        'infer', *argv[:1], SEG_CONFIG, 'missing.pth', *argv[1:]
    )


def test_infer_refuses_inputs_whose_outputs_would_collide(
    two_images, tmp_path
):
    listing, (first, second) = two_images
    line = infer_error(listing, '--out-dir', tmp_path / 'out')
    assert line == (
        f'error: {first} and {second} have the same file name '
        '(extension aside), which names their pictures and '
        'predictions in --out-dir; rename one or run them '
        'separately'
    )
    assert not (tmp_path / 'out').exists()


def test_infer_never_writes_over_an_input(two_images, tmp_path):
    _, (first, _) = two_images
    line = infer_error(first, '--out-dir', tmp_path, '--out', first)
    assert line == (
        f'error: --out {first} is the input image; give another file name'
    )
    (tmp_path / 'vis').mkdir()
    picture = tmp_path / 'vis' / 'scene.png'
    picture.write_bytes(first.read_bytes())
    line = infer_error(picture, '--out-dir', tmp_path)
    assert line == (
        f'error: --out-dir {tmp_path} would replace the input '
        f'image {picture}; give another --out-dir'
    )


@pytest.mark.parametrize(
    'option, value',
    [('--score-thr', 'nan'), ('--score-thr', '1.5'), ('--opacity', '-0.1')],
)
def test_infer_refuses_thresholds_that_are_not_in_0_1(
    two_images, option, value
):
    _, (image, _) = two_images
    line = infer_error(image, option, value)
    assert line == f'error: {option} {float(value)}: give a number from 0 to 1'


def test_infer_refuses_output_paths_of_the_wrong_kind(two_images, tmp_path):
    _, (image, _) = two_images
    line = infer_error(image, '--out-dir', image)
    assert line == (
        f'error: --out-dir {image} is a file; give a folder (it '
        'is created if needed)'
    )
    line = infer_error(image, '--out', tmp_path)
    assert line.startswith(
        f'error: --out {tmp_path} is a folder; give a '
        'file name for the picture'
    )


def test_infer_refuses_a_list_file_that_is_not_text(tmp_path):
    listing = tmp_path / 'images.txt'
    listing.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe binary')
    line = infer_error(listing)
    assert line.startswith(
        f'error: {listing} is not a text list of image '
        'paths (not UTF-8 text: invalid start byte at '
        'byte 0)'
    ), line


# --------------------------------------------------------------------------
# a defect of ours says so
# --------------------------------------------------------------------------


def test_an_unexpected_exception_is_reported_as_a_defect():
    def broken():
        raise ZeroDivisionError('a bug')

    status, err = tool_stderr(broken)
    assert status == 1
    assert 'Traceback' in err and 'ZeroDivisionError: a bug' in err
    assert err.strip().splitlines()[-1] == (
        'this is a defect in mmmetaformer; please report it with the '
        'traceback above'
    )
