"""What an installed mmmetaformer gives a user: the wheel's contents and
dependencies, and inheriting our configs the way mmengine allows."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from mmengine.config import Config

from tests.helpers import REPO_ROOT


def write_user_config(tmp_path, base):
    path = tmp_path / 'my_retinanet.py'
    path.write_text(
        f'_base_ = [{str(base)!r}]\n'
        'model = dict(backbone=dict(frozen_stages=1))\n'
        'train_cfg = dict(max_epochs=3)\n'
    )
    return path


def test_a_user_config_inherits_ours_by_absolute_path(tmp_path):
    base = REPO_ROOT / 'configs' / 'retinanet_poolformer_s12_coco.py'
    cfg = Config.fromfile(str(write_user_config(tmp_path, base)))
    assert cfg.model.backbone.type == 'PoolFormer'
    assert cfg.model.backbone.frozen_stages == 1
    assert cfg.train_cfg.max_epochs == 3
    # the base's import comes along, so the backbone builds
    assert 'mmmetaformer' in cfg.custom_imports.imports
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    assert MODELS.build(
        dict(cfg.model.backbone, init_cfg=None)
    ).out_strides == (8, 16, 32)  # RetinaNet: P3-P5


def test_a_user_config_inherits_ours_by_relative_path(tmp_path):
    user = tmp_path / 'work' / 'configs'
    user.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / 'configs', tmp_path / 'mmmetaformer_configs')
    cfg = Config.fromfile(
        str(
            write_user_config(
                user,
                '../../mmmetaformer_configs/retinanet_poolformer_s12_coco.py',
            )
        )
    )
    assert cfg.model.backbone.frozen_stages == 1


def test_package_scope_bases_are_refused_by_mmengine(tmp_path):
    """Why the docs give paths: mmengine resolves only its own package
    list, so an ``mmmetaformer::`` base cannot work."""
    path = tmp_path / 'scoped.py'
    path.write_text(
        "_base_ = ['mmmetaformer::toy/retinanet_poolformer_s12_toy_coco.py']\n"
    )
    with pytest.raises(AssertionError, match='mmmetaformer'):
        Config.fromfile(str(path))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """A wheel built from a copy of the tracked files (building writes
    mmmetaformer/.mim into the source tree, so not into this one)."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    files = subprocess.run(
        ['git', 'ls-files'],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file() and not name.startswith('tests/'):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(tmp / 'dist'),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / 'dist').glob('mmmetaformer-*.whl')
    return zipfile.ZipFile(path)


def test_wheel_carries_configs_tools_and_the_model_index(wheel):
    names = set(wheel.namelist())
    for name in (
        'mmmetaformer/.mim/model-index.yml',
        'mmmetaformer/.mim/configs/metafile.yml',
        'mmmetaformer/.mim/configs/retinanet_poolformer_s12_coco.py',
        'mmmetaformer/.mim/configs/_base_/retinanet_coco.py',
        'mmmetaformer/.mim/tools/train.py',
    ):
        assert name in names, name
    index = wheel.read('mmmetaformer/.mim/model-index.yml').decode()
    assert 'configs/metafile.yml' in index


def test_wheel_depends_on_what_the_package_imports(wheel):
    (metadata,) = [
        n for n in wheel.namelist() if n.endswith('.dist-info/METADATA')
    ]
    requires = [
        line.split(':', 1)[1].strip()
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith('Requires-Dist:')
    ]
    plain = [r for r in requires if 'extra ==' not in r]
    names = {
        r.split(';')[0]
        .split('>')[0]
        .split('<')[0]
        .split('=')[0]
        .strip()
        .lower()
        for r in plain
    }
    assert {'torch', 'mmengine', 'numpy', 'safetensors'} <= names
    assert 'timm' not in names  # only the tests' reference
    assert any(
        r.startswith('timm') and "extra == 'tests'" in r.replace('"', "'")
        for r in requires
    )
    # ranges, not pins that would downgrade another environment
    assert not [r for r in requires if '==' in r.split(';')[0]]


def test_wheel_holds_the_library_and_no_tool_only_module(wheel):
    """Importable packages: ``mmmetaformer`` only. What only the tools use
    travels as mim's copy of ``tools/`` (data beside ``train.py``)."""
    names = wheel.namelist()
    top = {n.split('/')[0] for n in names if n.endswith('.py')}
    assert top == {'mmmetaformer'}, top
    library = [n for n in names if n.endswith('.py') and '/.mim/' not in n]
    assert not [n for n in library if 'mmmetaformer_tools' in n]
    for module in ('launch', 'toy', 'measure', 'complexity'):
        assert not [n for n in library if n.endswith(f'/{module}.py')]
    assert 'mmmetaformer/.mim/tools/mmmetaformer_tools/launch.py' in names


def test_importing_the_library_imports_no_tool_module():
    code = (
        'import sys, mmmetaformer, mmmetaformer.export, '
        'mmmetaformer.datasets.checks\n'
        "print(sorted(m for m in sys.modules if 'mmmetaformer_tools' in m"
        " or m.endswith('.toy')))"
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == '[]'
