"""Where mmmetaformer registers its modules, and why there.

mmdet's and mmseg's registries are children of mmengine's root registries.
A lookup such as ``MODELS.get('PoolFormer')`` made under
``default_scope='mmdet'`` (or ``'mmseg'``) searches the scope's own registry
and then walks up to the root; it never visits a sibling scope. Two kinds
of names follow from that.

**Public names** go into the *root* registries, the one place that both
scopes see, whether mmdet, mmseg, both or neither are installed: the
backbones (``PoolFormer``, ``PoolFormerV2``, ``IdentityFormer``,
``RandFormer``, ``ConvFormer``, ``CAFormer``, ``ConvMixer``, ``MetaFormer``)
and ``StarReLU``. Users write plain ``type='PoolFormer'`` (or
``act_cfg=dict(type='StarReLU')`` in any mmcv/mmdet/mmseg module) after
``custom_imports=dict(imports=['mmmetaformer'], allow_failed_imports=False)``.
``register_public`` puts them in ``MODELS`` below as well. The same holds for
``MODEL_WRAPPERS`` (the CPU DDP wrapper) and ``OPTIM_WRAPPER_CONSTRUCTORS``:
the layer-decay constructor is found from both scopes by its name (which
differs from mmdet's and mmseg's own, so theirs do not shadow it).

**Building blocks** have generic names that other packages use too
(mmpretrain has a ``LayerNorm2d``; any plugin may register an ``Attention``
or a ``Pooling``): the token mixers ``Pooling``, ``SepConv``, ``Attention``,
``IdentityMixer``, ``RandomMixing`` and the norms ``GroupNorm1``,
``LayerNorm2d``. In the root, a second package registering one of those
names would make its import (or ours) fail with "already registered". They
live only in ``MODELS`` here, a child of the root ``MODELS`` with scope
``'mmmetaformer'``:

* Arch dicts name them plainly (``token_mixer_cfg=dict(type='Pooling')``):
  the backbones build every layer config (mixers, norms, activations, output
  norms) with ``MODELS.build``, which looks a plain name up *here first*,
  then in the default scope's registry and the root. Our ``Pooling`` wins
  over anyone else's; ``GN``, ``GELU`` and other packages' layers are still
  found as before.
* Anywhere else (an mmdet neck's ``norm_cfg``, a sibling scope), the scoped
  name reaches them: ``norm_cfg=dict(type='mmmetaformer.LayerNorm2d')``.
  mmengine resolves ``mmmetaformer.X`` from any registry of the tree and
  imports this package for it if needed.
* A user's own token mixer registered here (``@MODELS.register_module()``
  with ``from mmmetaformer.registry import MODELS``) is found by its plain
  name in arch dicts; one registered in the root or in the default scope's
  registry still is, too.

Public names never break an import either: if another package registered
one of them in the root first, ours is left out of the root with a warning,
and ``type='mmmetaformer.PoolFormer'`` still builds ours in any scope.
"""

import warnings

from mmengine.registry import (
    MODEL_WRAPPERS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    Registry,
    build_model_from_cfg,
)
from mmengine.registry import MODELS as ROOT_MODELS

SCOPE = 'mmmetaformer'


def scoped_cfg(cfg):
    """A shallow copy of the layer config ``cfg`` that names ours first.

    A plain ``type`` registered in ``MODELS`` becomes
    ``'mmmetaformer.<type>'``, which every registry of the tree (and mmcv's
    ``build_norm_layer``) resolves to ours; any other type is left alone, so
    it resolves as usual: the default scope's registry, then the root.
    """
    cfg = dict(cfg)
    name = cfg.get('type')
    if (
        isinstance(name, str)
        and '.' not in name
        and name in MODELS.module_dict
    ):
        cfg['type'] = f'{SCOPE}.{name}'
    return cfg


def _scoped_known_cfg(cfg, registry):
    """``scoped_cfg(cfg)``; a type found nowhere raises a KeyError that
    names it, where it was looked for and our own names."""
    cfg = scoped_cfg(cfg)
    name = cfg.get('type')
    if isinstance(name, str) and '_scope_' not in cfg:
        with registry.switch_scope_and_registry(None) as searched:
            found = searched.get(name)
        if found is None:
            raise KeyError(
                f"type='{name}' is not registered in mmmetaformer's "
                f"registry, in the '{searched.scope}' scope's registry or in "
                f"mmengine's root registry; mmmetaformer's own: "
                f'{", ".join(sorted(MODELS.module_dict))}'
            )
    return cfg


def _build_ours_first(cfg, registry, default_args=None):
    """``build_model_from_cfg`` with plain names looked up here first."""
    if isinstance(cfg, list):
        cfg = [_scoped_known_cfg(c, registry) for c in cfg]
    elif isinstance(cfg, dict):
        cfg = _scoped_known_cfg(cfg, registry)
    return build_model_from_cfg(cfg, registry, default_args)


MODELS = Registry(
    'model', parent=ROOT_MODELS, scope=SCOPE, build_func=_build_ours_first
)


def register_public(module):
    """Register ``module`` in ``MODELS`` and, by the same name, in the root.

    Usable as a class decorator. A root name already taken by another
    package is left to it, with a warning: importing both keeps working and
    ``'mmmetaformer.<name>'`` names ours.
    """
    MODELS.register_module(module=module)
    name = module.__name__
    taken = ROOT_MODELS.module_dict.get(name)
    if taken is None:
        ROOT_MODELS.register_module(module=module)
    elif taken is not module:
        warnings.warn(
            f"'{name}' is already registered in mmengine's root MODELS by "
            f"{taken.__module__}; mmmetaformer's {name} is not added there. "
            f"Use type='{SCOPE}.{name}' for ours.",
            stacklevel=2,
        )
    return module


__all__ = [
    'MODELS',
    'MODEL_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS',
    'ROOT_MODELS',
    'SCOPE',
    'register_public',
    'scoped_cfg',
]
