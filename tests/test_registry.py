"""Where names are registered (``mmmetaformer/registry.py``) and that they
stay collision-proof.

Public names (backbones, ``StarReLU``) are in mmengine's root registry so
plain ``type='PoolFormer'`` works under the mmdet and mmseg scopes; the
generic building blocks (``Pooling``, ``Attention``, ``LayerNorm2d``, ...)
are only in our child registry (scope ``mmmetaformer``), looked up first by
our backbones and reachable anywhere as ``mmmetaformer.<name>``. The
fresh-process tests import mmmetaformer next to mmpretrain (its own
``PoolFormer`` and ``LayerNorm2d``) and next to a plugin that takes our
generic names, and the public name ``PoolFormer``, in the root, in both
import orders.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope, init_default_scope

import mmmetaformer  # noqa: F401
from mmmetaformer.models.archs import CONVMIXER_ARCHS, METAFORMER_ARCHS
from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES
from mmmetaformer.models.core import GELU
from mmmetaformer.registry import MODELS, ROOT_MODELS, SCOPE

BUILDING_BLOCKS = (
    'Attention',
    'GroupNorm1',
    'IdentityMixer',
    'LayerNorm2d',
    'Pooling',
    'RandomMixing',
    'SepConv',
)
PUBLIC = ('MetaFormer', 'StarReLU', *FAMILY_CLASSES.values())
SCOPES = [None, 'mmdet', 'mmseg']


@pytest.fixture
def default_scope(request):
    """Run the test under ``request.param`` as mmengine's default scope
    (``None``: none), restoring the previous state afterwards."""
    saved = dict(DefaultScope._instance_dict)
    DefaultScope._instance_dict.clear()
    if request.param is not None:
        init_default_scope(request.param)
    yield request.param
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


@pytest.fixture
def registered():
    """``registered(registry, cls)``: register ``cls`` for this test only.

    Some tests register look-alikes of real layers (a ``Pooling`` in
    mmdet's registry), which must not outlive the test. mmengine's
    registries have no public way to unregister, so the fixture removes
    its own entries from the registry's module dict afterwards: the one
    private access of the suite, for that reason.
    """
    added = []

    def register(registry, cls):
        assert cls.__name__ not in registry.module_dict
        registry.register_module(module=cls)
        added.append((registry, cls.__name__))
        return cls

    yield register
    for registry, name in added:
        del registry._module_dict[name]


class ShiftMixer(nn.Module):
    """A user's token mixer (the README example)."""

    def __init__(self, dim, shift=1):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        return torch.roll(x, self.shift, dims=-1) - x


TINY = dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])


def test_generic_names_only_in_our_registry_public_names_in_both():
    assert MODELS.scope == SCOPE and MODELS.parent is ROOT_MODELS
    assert ROOT_MODELS.children[SCOPE] is MODELS
    for name in BUILDING_BLOCKS:
        assert name in MODELS.module_dict, name
        assert name not in ROOT_MODELS.module_dict, name
    for name in PUBLIC:
        assert ROOT_MODELS.module_dict[name] is MODELS.module_dict[name], name


def test_family_classes_cover_every_arch_table_family():
    """The one family -> class map: every family of the arch tables, in
    their order, each class registered and serving exactly its table."""
    assert list(FAMILY_CLASSES) == [*METAFORMER_ARCHS, 'convmixer']
    for family, name in FAMILY_CLASSES.items():
        cls = ROOT_MODELS.get(name)
        assert cls.family == family
        expected = (
            CONVMIXER_ARCHS
            if family == 'convmixer'
            else METAFORMER_ARCHS[family]
        )
        assert cls.arch_zoo == expected, family
    assert ROOT_MODELS.get('MetaFormer').family is None


@pytest.mark.parametrize('default_scope', SCOPES, indirect=True)
def test_user_mixer_registered_as_the_readme_says(default_scope, registered):
    """``@MODELS.register_module()`` with ``from mmmetaformer.registry
    import MODELS``; the arch dict names it plainly, in any scope."""
    registered(MODELS, ShiftMixer)
    model = MODELS.build(
        dict(
            type='PoolFormer',
            out_norm_cfg=None,
            arch=dict(TINY, token_mixer_cfg=dict(type='ShiftMixer', shift=2)),
        )
    )
    mixers = [b.token_mixer for s in model.stages for b in s.blocks]
    assert all(type(m) is ShiftMixer and m.shift == 2 for m in mixers)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == TINY['dims']
    # The family defaults fill the rest (PoolFormer v1: GELU MLP with bias;
    # GELU is ours, an exact nn.GELU in its fastest layout).
    assert model.arch_settings['mlp_bias'] is True
    act = model.stages[0].blocks[0].mlp.act
    assert type(act) is GELU and isinstance(act, nn.GELU)


@pytest.mark.parametrize('default_scope', ['mmdet'], indirect=True)
@pytest.mark.parametrize('where', ['root', 'scope'])
def test_mixers_registered_elsewhere_are_found_too(
    default_scope, where, registered
):
    """A mixer in the root, or in the default scope's own registry."""
    from mmdet.registry import MODELS as MMDET_MODELS

    registered(ROOT_MODELS if where == 'root' else MMDET_MODELS, ShiftMixer)
    model = MMDET_MODELS.build(
        dict(
            type='PoolFormer',
            out_norm_cfg=None,
            arch=dict(TINY, token_mixer_cfg=dict(type='ShiftMixer')),
        )
    )
    assert type(model.stages[3].blocks[0].token_mixer) is ShiftMixer


@pytest.mark.parametrize('default_scope', ['mmdet'], indirect=True)
def test_our_layers_win_over_the_scopes_own(default_scope, registered):
    """mmdet's registry holding a ``Pooling`` and a ``LayerNorm2d`` of its
    own does not change what our arch dicts build."""
    from mmdet.registry import MODELS as MMDET_MODELS

    foreign = [
        type(name, (nn.Module,), {}) for name in ('Pooling', 'LayerNorm2d')
    ]
    for cls in foreign:
        registered(MMDET_MODELS, cls)
    model = MMDET_MODELS.build(
        dict(
            type='ConvFormer',
            arch=dict(TINY, token_mixer_cfg=dict(type='Pooling')),
        )
    )
    ours = MODELS.module_dict
    block = model.stages[0].blocks[0]
    assert type(block.token_mixer) is ours['Pooling']
    assert type(block.norm1) is ours['LayerNorm2d']  # ConvFormer's norm
    assert type(model.stem.norm) is ours['LayerNorm2d']


@pytest.mark.parametrize('default_scope', SCOPES, indirect=True)
def test_scoped_names_reach_our_layers_from_any_registry(default_scope):
    from mmcv.cnn import build_norm_layer
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    for registry in (ROOT_MODELS, MMDET_MODELS, MMSEG_MODELS, MODELS):
        for name in BUILDING_BLOCKS + PUBLIC:
            assert (
                registry.get(f'{SCOPE}.{name}') is MODELS.module_dict[name]
            ), (registry.scope, name)
    # mmcv's own builder, as an mmdet/mmseg neck's norm_cfg would use it
    _, norm = build_norm_layer(dict(type='mmmetaformer.LayerNorm2d'), 8)
    assert type(norm) is MODELS.module_dict['LayerNorm2d']
    # out_norm_cfg names ours plainly (and mmcv's GN as before)
    model = MODELS.build(
        dict(
            type='PoolFormer',
            arch=TINY | dict(token_mixer_cfg=dict(type='Pooling')),
            out_indices=(3,),
            out_norm_cfg=dict(type='LayerNorm2d', eps=1e-6),
        )
    )
    assert type(model.out_norms['3']) is MODELS.module_dict['LayerNorm2d']
    assert model.out_norms['3'].eps == 1e-6


def test_unknown_type_names_it_and_our_layers():
    with pytest.raises((KeyError, ValueError)) as err:
        MODELS.build(
            dict(
                type='PoolFormer',
                arch=dict(TINY, token_mixer_cfg=dict(type='Poolling')),
            )
        )
    msg = str(err.value)
    assert "type='Poolling' is not registered" in msg
    assert all(name in msg for name in BUILDING_BLOCKS)


# ---------------------------------------------------------------------------
# Next to other packages, in fresh processes (registration is process-wide)
# ---------------------------------------------------------------------------

# A plugin that registers our generic names, and the public name
# PoolFormer, in the root registry, as any OpenMMLab plugin may.
FOREIGN_PLUGIN = """
import warnings
import torch.nn as nn
from mmengine.registry import MODELS as ROOT
FOREIGN = {}
for _name in %r:
    FOREIGN[_name] = ROOT.register_module(
        module=type(_name, (nn.Module, ), {'__module__': 'foreign_plugin'}))
"""

CHECKS = """
import importlib
import torch
from mmengine.registry import MODELS as ROOT, init_default_scope
from mmcv.cnn import build_norm_layer
from mmmetaformer.registry import MODELS as OURS
import mmpretrain.models  # noqa: F401  (registers mmpretrain's models)
from mmpretrain.registry import MODELS as MMPRETRAIN

def ours(name):
    return OURS.module_dict[name]

for scope in ('mmdet', 'mmseg'):
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    # the public name: ours, unless a plugin took it in the root first
    if 'PoolFormer' in FOREIGN:
        assert registry.get('PoolFormer') is FOREIGN['PoolFormer']
    else:
        pool = registry.build(dict(type='PoolFormer', arch='s12',
                                   out_indices=(0, )))
        assert type(pool) is ours('PoolFormer')
    # ours by its scoped name, always
    pool = registry.build(dict(type='mmmetaformer.PoolFormer', arch='s12'))
    ca = registry.build(dict(type='mmmetaformer.CAFormer', arch='s18'))
    assert type(pool) is ours('PoolFormer')
    # their arch dicts built our generic layers
    assert type(pool.stages[0].blocks[0].token_mixer) is ours('Pooling')
    assert type(ca.stages[3].blocks[0].token_mixer) is ours('Attention')
    assert type(ca.stages[0].blocks[0].token_mixer) is ours('SepConv')
    assert type(ca.stages[0].blocks[0].norm1) is ours('LayerNorm2d')
    assert type(pool.stages[0].blocks[0].norm1) is ours('GroupNorm1')
    feats = pool(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128, 320, 512]
    # mmpretrain's PoolFormer and LayerNorm2d ('LN2d') build too
    theirs = registry.build(dict(type='mmpretrain.PoolFormer', arch='s12'))
    assert type(theirs) is MMPRETRAIN.get('PoolFormer')
    assert type(theirs) is not ours('PoolFormer')
    assert len(theirs(torch.randn(1, 3, 64, 64))) == 1
    _, ln = build_norm_layer(dict(type='mmpretrain.LN2d'), 8)
    assert type(ln).__module__.startswith('mmpretrain'), type(ln)
    _, ln = build_norm_layer(dict(type='mmmetaformer.LayerNorm2d'), 8)
    assert type(ln) is ours('LayerNorm2d')
    # a plain generic name outside our arch dicts is the plugin's
    if FOREIGN:
        assert registry.get('LayerNorm2d') is FOREIGN['LayerNorm2d']

# under mmpretrain's scope, plain PoolFormer is mmpretrain's
init_default_scope('mmpretrain')
assert MMPRETRAIN.get('PoolFormer') is not ours('PoolFormer')
assert MMPRETRAIN.get('mmmetaformer.PoolFormer') is ours('PoolFormer')
print('ok')
"""

ORDERS = {
    # The plugin and mmpretrain first. mmmetaformer is first imported by
    # mmengine itself, to resolve a scoped name (no explicit import).
    'others_first': FOREIGN_PLUGIN % ((*BUILDING_BLOCKS, 'PoolFormer'),)
    + """
import mmpretrain.models  # noqa: F401
import sys
from mmdet.registry import MODELS as MMDET
from mmengine.registry import init_default_scope
init_default_scope('mmdet')
assert 'mmmetaformer' not in sys.modules
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    MMDET.build(dict(type='mmmetaformer.PoolFormer', arch='s12'))
assert 'mmmetaformer' in sys.modules
# our PoolFormer left the root name to the plugin, and said so
messages = [str(w.message) for w in caught]
assert any("'PoolFormer' is already registered" in m and
           "type='mmmetaformer.PoolFormer'" in m for m in messages), messages
"""
    + CHECKS,
    # mmmetaformer first; mmpretrain and the plugin register afterwards.
    'mmmetaformer_first': """
import mmmetaformer  # noqa: F401
import mmpretrain.models  # noqa: F401
"""
    + FOREIGN_PLUGIN % (BUILDING_BLOCKS,)
    + CHECKS,
}


@pytest.mark.parametrize('order', list(ORDERS))
def test_next_to_mmpretrain_and_a_plugin_taking_our_names(order):
    proc = subprocess.run(
        [sys.executable, '-c', ORDERS[order]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('ok')
