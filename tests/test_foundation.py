"""The foundation: stack imports, compiled ops, registration, launchers."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, built_stack, run_tool


def test_every_stack_package_imports():
    """Whichever tested stack is installed: every package imports, reports
    the version its distribution was installed with, and lies in the ranges
    the plugin declares (requirements/mminstall.txt)."""
    from importlib.metadata import version

    from mmmetaformer_tools.env_check import STACK_PACKAGES, stack_versions

    from packaging.requirements import Requirement

    versions = stack_versions()
    assert set(versions) == {name for name, _ in STACK_PACKAGES}
    for module_name, dist_name in STACK_PACKAGES:
        assert (
            versions[module_name].split('+')[0]
            == version(dist_name).split('+')[0]
        ), dist_name
    declared = [
        Requirement(line.split('#')[0])
        for line in (REPO_ROOT / 'requirements' / 'mminstall.txt')
        .read_text()
        .splitlines()
        if line.split('#')[0].strip()
    ]
    for req in declared:
        assert version(req.name) in req.specifier, (
            req.name,
            version(req.name),
        )


def test_mmcv_compiled_ops_on_cpu_tensors():
    from mmmetaformer_tools.env_check import check_mmcv_ops

    import torch
    from mmcv.ops import RoIAlign, batched_nms, nms

    check_mmcv_ops()
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.2]])
    _, keep = nms(boxes, torch.tensor([0.5, 0.9]), 0.5)
    assert keep.tolist() == [1]
    _, keep = batched_nms(
        boxes,
        torch.tensor([0.5, 0.9]),
        torch.tensor([0, 1]),
        dict(iou_threshold=0.5),
    )
    assert sorted(keep.tolist()) == [0, 1]
    feats = torch.ones(1, 2, 8, 8)
    out = RoIAlign(2, 1.0, 2)(feats, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]))
    assert torch.allclose(out, torch.ones(1, 2, 2, 2))


def test_missing_mmcv_ops_gives_the_fix():
    """Block ``mmcv._ext`` as a build without ops lacks it."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class BlockExt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == 'mmcv._ext':
                    raise ImportError('No module named mmcv._ext')
        sys.meta_path.insert(0, BlockExt())
        sys.argv = ['check_env.py']
        sys.path.insert(0, {str(REPO_ROOT / 'tools')!r})
        import runpy
        runpy.run_path({str(REPO_ROOT / 'tools' / 'check_env.py')!r},
                       run_name='__main__')
    """)
    proc = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert 'without its compiled ops' in proc.stderr
    assert 'MMCV_WITH_OPS=1' in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registry_visible_from_both_scopes(scope):
    from mmengine.registry import MODELS, DefaultScope, init_default_scope

    from mmmetaformer.models.backbones import FAMILY_CLASSES

    saved = dict(DefaultScope._instance_dict)
    try:
        init_default_scope(scope)
        scope_models = importlib.import_module(f'{scope}.registry').MODELS
        assert scope_models.scope == scope
        for name in (*FAMILY_CLASSES.values(), 'MetaFormer', 'StarReLU'):
            assert scope_models.get(name) is not None, (scope, name)
        backbone = scope_models.build(
            dict(type='PoolFormer', arch='s12', out_indices=(3,))
        )
        assert type(backbone).__name__ == 'PoolFormer'
        assert DefaultScope.get_current_instance().scope_name == scope
        # The root registry built it: the scope's own registry has no copy.
        assert 'PoolFormer' not in scope_models.module_dict
        assert MODELS.get('PoolFormer') is type(backbone)
    finally:  # later tests run without a default scope, as before
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(saved)


def test_starrelu_in_an_mmcv_convmodule():
    import torch
    from mmcv.cnn import ConvModule

    import mmmetaformer  # noqa: F401

    module = ConvModule(3, 4, 3, padding=1, act_cfg=dict(type='StarReLU'))
    assert type(module.activate).__name__ == 'StarReLU'
    out = module(torch.randn(1, 3, 8, 8))
    assert out.shape == (1, 4, 8, 8)
    assert (out >= module.activate.bias).all()


CUSTOM_IMPORTS_CFG = {
    'mmdet': """
    _base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
    custom_imports = dict(imports=['mmmetaformer'], allow_failed_imports=False)
    model = dict(
        backbone=dict(_delete_=True, type='PoolFormer', arch='s12'),
        neck=dict(in_channels=[64, 128, 320, 512]))
    """,
    'mmseg': """
    _base_ = ['mmseg::_base_/models/fpn_r50.py',
              'mmseg::_base_/default_runtime.py']
    custom_imports = dict(imports=['mmmetaformer'], allow_failed_imports=False)
    norm_cfg = dict(type='BN', requires_grad=True)
    model = dict(
        pretrained=None,  # the ResNet base sets an ImageNet ResNet here
        backbone=dict(_delete_=True, type='ConvFormer', arch='s18'),
        neck=dict(in_channels=[64, 128, 320, 512]),
        decode_head=dict(norm_cfg=norm_cfg))
    """,
}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_custom_imports_in_a_stock_config(scope, tmp_path):
    """A user's config needs only ``custom_imports``; run in a fresh process
    so the import really comes from ``custom_imports``."""
    cfg_file = tmp_path / f'{scope}_cfg.py'
    cfg_file.write_text(textwrap.dedent(CUSTOM_IMPORTS_CFG[scope]))
    script = textwrap.dedent(f"""
        import sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile({str(cfg_file)!r})
        assert 'mmmetaformer' in sys.modules
        init_default_scope(cfg.default_scope)
        from {scope}.registry import MODELS
        model = MODELS.build(cfg.model)
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
        print(type(model.backbone).__name__, len(feats))
    """)
    proc = subprocess.run(
        [sys.executable, '-c', script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {'mmdet': 'PoolFormer 5', 'mmseg': 'ConvFormer 4'}[scope]
    assert proc.stdout.strip().endswith(expected)


def test_package_imports_with_only_one_downstream_framework():
    """Block mmdet (then mmseg): ``import mmmetaformer`` still works."""
    for blocked in ('mmdet', 'mmseg'):
        script = textwrap.dedent(f"""
            import importlib.abc, sys
            class Block(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path, target=None):
                    if name.split('.')[0] == {blocked!r}:
                        raise ImportError('blocked ' + name)
            sys.meta_path.insert(0, Block())
            import mmmetaformer
            from mmengine.registry import MODELS
            assert MODELS.get('CAFormer') is not None
            print('ok')
        """)
        proc = subprocess.run(
            [sys.executable, '-c', script], capture_output=True, text=True
        )
        assert proc.returncode == 0 and proc.stdout.strip() == 'ok', (
            blocked,
            proc.stderr[-2000:],
        )


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_tool_help(tool):
    proc = run_tool(tool, '--help')
    assert proc.returncode == 0
    for flag in ('--work-dir', '--cfg-options', '--launcher'):
        assert flag in proc.stdout
    if tool == 'train.py':
        for flag in ('--resume', '--amp', '--auto-scale-lr'):
            assert flag in proc.stdout
    else:
        for flag in ('--out', '--show-dir'):
            assert flag in proc.stdout


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_missing_config_is_a_clear_error(tool, tmp_path):
    args = [str(tmp_path / 'nope.py')]
    if tool == 'test.py':
        args.append('ckpt.pth')
    proc = run_tool(tool, *args)
    assert proc.returncode == 2
    # the error is the only line: no import-time notice of the frameworks
    # before it (tests/test_quiet_tools.py, the other tools)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith('error: Config file not found')
    assert 'nope.py' in line


def test_unsupported_scope_is_a_clear_error(tmp_path):
    cfg = tmp_path / 'cls.py'
    cfg.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='X')\n")
    proc = run_tool('train.py', str(cfg))
    assert proc.returncode == 2
    assert "default_scope='mmpretrain'" in proc.stderr
    assert "'mmdet'" in proc.stderr and "'mmseg'" in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_cfg_options_typo_is_a_clear_error(tmp_path):
    cfg = tmp_path / 'det.py'
    cfg.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
    )
    proc = run_tool(
        'train.py',
        str(cfg),
        '--cfg-options',
        'optim_wrapper.optimizer.lrr=0.1',
    )
    assert proc.returncode == 2
    assert "'optim_wrapper.optimizer.lrr'" in proc.stderr
    assert "did you mean 'lr'" in proc.stderr
    proc = run_tool(
        'train.py', str(cfg), '--cfg-options', 'trian_cfg.max_epochs=1'
    )
    assert proc.returncode == 2 and "did you mean 'train_cfg'" in proc.stderr


def test_cfg_options_accepts_new_and_existing_keys():
    from mmmetaformer_tools.launch import validate_cfg_options

    from mmengine.config import Config

    cfg = Config(dict(a=dict(b=1, items=[dict(c=2)]), model=dict()))
    validate_cfg_options(
        cfg, {'a.b': 3, 'a.items.0.c': 4, 'model.backbone': dict(type='X')}
    )
    with pytest.raises(Exception, match='not a valid index'):
        validate_cfg_options(cfg, {'a.items.5.c': 1})
    # a Runner argument the config leaves out may be new whole; a typo of
    # one is no Runner argument and stays refused
    validate_cfg_options(cfg, {'compile.backend': 'eager'})
    with pytest.raises(Exception, match="no key 'compiel'"):
        validate_cfg_options(cfg, {'compiel.backend': 'eager'})


def test_env_setup_has_nothing_to_do_the_second_time():
    """A second ``make env`` only verifies: the stamp matches, the checks
    pass, and no install step runs (the stamp is not rewritten)."""
    stack = built_stack(sys.prefix)
    if stack is None:
        pytest.skip('the suite is not running in a .venv-<stack> environment')
    stamp = Path(sys.prefix) / '.mmmetaformer-env-stamp'
    before = (stamp.read_text(), stamp.stat().st_mtime_ns)
    proc = subprocess.run(
        ['bash', 'tools/setup_env.sh', stack],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, MMMETAFORMER_VENV=sys.prefix),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith(f'[setup_env:{stack}]')
    ]
    assert len(steps) == 1 and 'up to date' in steps[0], proc.stdout
    assert (stamp.read_text(), stamp.stat().st_mtime_ns) == before


def test_env_setup_refuses_an_unknown_stack(tmp_path):
    proc = subprocess.run(
        ['bash', 'tools/setup_env.sh', 'nightly'],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, MMMETAFORMER_VENV=str(tmp_path / 'venv')),
    )
    assert proc.returncode == 2
    assert "unknown stack 'nightly'" in proc.stderr
    assert 'classic' in proc.stderr and 'current' in proc.stderr
    assert not (tmp_path / 'venv').exists()


def test_every_stack_pins_the_packages_it_tests():
    """Each stack file pins torch, torchvision and the OpenMMLab releases
    exactly (tools/setup_env.sh reads the torch and mmcv versions from it),
    and those pins lie in the ranges the plugin declares."""
    from packaging.requirements import Requirement

    declared = {}
    for line in (
        (REPO_ROOT / 'requirements' / 'mminstall.txt').read_text().splitlines()
    ):
        if line.split('#')[0].strip():
            req = Requirement(line.split('#')[0])
            declared[req.name] = req.specifier
    stacks = sorted((REPO_ROOT / 'requirements' / 'stacks').glob('*.txt'))
    assert {p.stem for p in stacks} >= {'classic', 'current'}
    for path in stacks:
        pins = {}
        for line in path.read_text().splitlines():
            if line.split('#')[0].strip():
                req = Requirement(line.split('#')[0])
                spec = str(req.specifier)
                if spec.startswith('=='):
                    pins[req.name] = spec[2:]
        for name in (
            'torch',
            'torchvision',
            'mmcv',
            'mmengine',
            'mmdet',
            'mmsegmentation',
        ):
            assert name in pins, (path.name, name)
        for name, spec in declared.items():
            if name in pins:
                assert pins[name] in spec, (path.name, name, pins[name])
