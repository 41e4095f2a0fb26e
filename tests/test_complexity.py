"""MAC and parameter counting (``mmmetaformer_tools.complexity``) and
``tools/analysis/get_flops.py``.

The published figures (``REFERENCE``, from the papers) are for ImageNet
classifiers; the backbones have no classifier, so the head is added back
analytically (``head_params``/``head_macs``: final norm plus a Linear head,
or ConvFormer/CAFormer's MLP head, about 0.5M and 3.1M parameters for
dims 512). Only the small archs are counted here (counting runs the model).
"""

from mmmetaformer_tools.complexity import (
    REFERENCE,
    count_backbone,
    count_macs,
    head_macs,
    head_params,
)

import pytest
import torch
import torch.nn as nn

import mmmetaformer  # noqa: F401
from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
from mmmetaformer.registry import MODELS

from .helpers import run_tool

SMALL = [
    (FAMILY_CLASSES[family], family, arch)
    for family, arch in (
        ('poolformer', 's12'),
        ('convformer', 's18'),
        ('caformer', 's18'),
        ('identityformer', 's12'),
    )
]
SDPA = 'aten::scaled_dot_product_attention'
_COUNTS = {}


def build(cls_name, arch):
    return MODELS.build(dict(type=cls_name, arch=arch, out_norm_cfg=None))


def counted(cls_name, arch):
    """``(model, count_backbone result)`` at 224x224, computed once."""
    if (cls_name, arch) not in _COUNTS:
        model = build(cls_name, arch)
        _COUNTS[cls_name, arch] = (model, count_backbone(model, (224, 224)))
    return _COUNTS[cls_name, arch]


@pytest.mark.parametrize(
    'cls_name,family,arch', SMALL, ids=[f'{f}_{a}' for _, f, a in SMALL]
)
def test_matches_published_figures(cls_name, family, arch):
    model, result = counted(cls_name, arch)
    ref = REFERENCE[f'{family}_{arch}']
    dim = model.arch_settings['dims'][-1]
    macs = result['macs'] + head_macs(family, dim)
    params = result['params'] + head_params(family, dim)
    assert abs(macs - ref['macs']) / ref['macs'] < 0.03, (macs, ref)
    assert abs(params - ref['params']) / ref['params'] < 0.05, (params, ref)
    # Every op these backbones trace to is either counted or deliberately
    # ignored.
    assert result['unsupported'] == {}
    assert result['params'] == sum(p.numel() for p in model.parameters())


def test_attention_is_counted():
    model, result = counted('CAFormer', 's18')
    without = count_backbone(model, (224, 224), handles={SDPA: None})
    # Q K^T and A V: 2 * heads * N^2 * head_dim = 2 * N^2 * C per block.
    depths, dims = model.arch_settings['depths'], model.arch_settings['dims']
    tokens = [14 * 14, 7 * 7]  # stages 3 and 4 at 224x224
    expected = sum(
        depths[i] * 2 * n * n * dims[i] for i, n in zip((2, 3), tokens)
    )
    assert result['by_operator']['scaled_dot_product_attention'] == expected
    assert result['macs'] - without['macs'] == expected
    assert SDPA not in without['unsupported']


def test_pooling_is_counted():
    model, result = counted('PoolFormer', 's12')
    depths, dims = model.arch_settings['depths'], model.arch_settings['dims']
    sides = [56, 28, 14, 7]
    expected = sum(9 * d * c * s * s for d, c, s in zip(depths, dims, sides))
    assert result['by_operator']['avg_pool2d'] == expected


def test_same_padding_conv_is_counted():
    same = nn.Conv2d(8, 8, 3, padding='same', groups=8)
    explicit = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(1, 8, 10, 10)
    assert (
        count_macs(same, x)['macs']
        == count_macs(explicit, x)['macs']
        == 9 * 8 * 10 * 10
    )


def test_all_backbones_cli():
    proc = run_tool(
        'analysis/get_flops.py',
        '--all-backbones',
        '--only',
        'poolformer_s12',
        'caformer_s18',
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert '| model | params (M) |' in out and '| diff |' in out
    rows = [
        line
        for line in out.splitlines()
        if line.startswith(('| poolformer', '| caformer'))
    ]
    assert [row.split('|')[1].strip() for row in rows] == [
        'poolformer_s12',
        'caformer_s18',
    ]
    for row in rows:
        diff = float(row.rstrip(' |').rsplit('|', 1)[1].strip(' %'))
        assert abs(diff) < 3.0, row


def test_unknown_arch_is_a_clear_error():
    proc = run_tool(
        'analysis/get_flops.py',
        '--backbone',
        'CAFormer',
        '--arch',
        's19',
        timeout=120,
    )
    assert proc.returncode == 2
    assert 'error:' in proc.stderr and 'Traceback' not in proc.stderr
    assert "Unknown arch 's19'" in proc.stderr
    assert 's18, s36, m36, b36' in proc.stderr


def test_config_counts_backbone_and_neck(tmp_path):
    config = tmp_path / 'seg.py'
    config.write_text(
        "_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'\n"
        "custom_imports = dict(imports=['mmmetaformer'], "
        'allow_failed_imports=False)\n'
        'model = dict(pretrained=None, '
        "backbone=dict(_delete_=True, type='PoolFormer', arch='s12'), "
        'neck=dict(in_channels=[64, 128, 320, 512]))\n'
    )
    proc = run_tool(
        'analysis/get_flops.py', config, '--shape', '64', timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert 'backbone + neck via model.extract_feat' in proc.stdout
    assert 'MACs:' in proc.stdout and 'Input: 1x3x64x64' in proc.stdout
