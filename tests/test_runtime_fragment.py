"""Every config in configs/ gets mmmetaformer's import and hooks from one
fragment, ``configs/_base_/metaformer_runtime.py``.

- Each recipe base (a file in configs/_base_ built on an mmdet/mmseg
  config) lists the fragment and sets ``custom_imports``,
  ``default_hooks.checkpoint`` and ``custom_hooks`` from its named values.
  Parsed in full by mmengine, it resolves to the fragment's import,
  ``AtomicCheckpointHook`` at the recipe's own checkpoint interval,
  ``ExactResumeHook`` and one ``NaNGuardHook`` (stop for the fp32 paper
  recipes, skip for the AMP and ``--amp`` ones).
- Every other config (leaves, toys, examples) reaches exactly one recipe
  base through its local bases, and no file on the way changes the import,
  the custom hooks or the checkpoint hook's type: read without resolving
  (a full parse of 140 configs costs minutes). The toy configs, which
  replace ``default_hooks`` values, are also parsed in full. The only
  configs on no recipe base are the two drop-in examples, stock
  mmdet/mmseg configs that set the import and the checkpoint hook
  themselves.
"""

import ast
import functools

import pytest
from mmengine.config import Config

from .helpers import REPO_ROOT, own_settings

CONFIGS = REPO_ROOT / 'configs'
BASES = CONFIGS / '_base_'
FRAGMENT = BASES / 'metaformer_runtime.py'
# recipe base -> NaNGuardHook action (mmmetaformer/engine/nan_guard.py)
NAN_GUARD_ACTION = dict(
    retinanet_coco='stop',  # the paper recipes train in fp32
    mask_rcnn_coco='stop',
    semantic_fpn_ade20k='stop',
    cascade_mask_rcnn_coco='skip',  # the ConvNeXt recipes train with AMP
    upernet_ade20k='skip',
    dino_4scale_coco='skip',  # fp32, --amp possible
    mask2former_ade20k='skip',
    mask2former_coco='skip',
)
# the recipe's own checkpoint interval: only the hook's type changes
CHECKPOINT_INTERVAL = dict(
    retinanet_coco=1,  # epochs
    mask_rcnn_coco=1,
    cascade_mask_rcnn_coco=1,
    dino_4scale_coco=1,
    semantic_fpn_ade20k=4000,  # iterations
    upernet_ade20k=16000,
    mask2former_ade20k=5000,
    mask2former_coco=5000,
)
# stock mmdet/mmseg configs with the backbone swapped, on no recipe base
DROP_IN = [
    'configs/examples/faster_rcnn_poolformer_s12_drop_in.py',
    'configs/examples/upernet_convformer_s18_drop_in.py',
]


@functools.cache
def load(path):
    """Parsed once by mmengine (the mmdet::/mmseg:: chain takes a
    second). Read only."""
    return Config.fromfile(str(path))


def assignments(path):
    """Top-level ``name = <expression>`` of a config file, as AST nodes."""
    return {
        node.targets[0].id: node.value
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
    }


def base_list(path):
    node = assignments(path).get('_base_')
    bases = ast.literal_eval(node) if node is not None else []
    return [bases] if isinstance(bases, str) else list(bases)


def local_bases(path):
    return [
        (path.parent / b).resolve() for b in base_list(path) if '::' not in b
    ]


def is_recipe_base(path):
    return path.parent == BASES and any('::' in b for b in base_list(path))


def value_of(path, node):
    """The value of an assigned expression: a literal, or
    ``_base_.NAME`` read from the local base that defines NAME."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == '_base_'
    ):
        (value,) = [
            own_settings(base)[node.attr]
            for base in local_bases(path)
            if node.attr in own_settings(base)
        ]
        return value
    return eval(compile(ast.Expression(node), str(path), 'eval'), {})


def runtime_changes(path):
    """What ``path`` itself does to the import, the custom hooks and the
    checkpoint hook's type (names of what it changes)."""
    own = assignments(path)
    changed = {k for k in ('custom_imports', 'custom_hooks') if k in own}
    if 'default_hooks' in own:
        hooks = value_of(path, own['default_hooks'])
        checkpoint = hooks.get('checkpoint', {})
        if hooks.get('_delete_') or {'type', '_delete_'} & set(checkpoint):
            changed.add('default_hooks.checkpoint')
    return changed


def chain_to_recipe_bases(path, seen=()):
    """(files on the way, recipe bases reached) along local bases."""
    if is_recipe_base(path):
        return [], [path]
    files, recipes = [path], []
    for base in local_bases(path):
        if base not in seen:
            more, found = chain_to_recipe_bases(base, seen + (path,))
            files += more
            recipes += found
    return files, recipes


def configs():
    return sorted(p for p in CONFIGS.rglob('*.py') if '_base_' not in p.parts)


def test_the_recipe_bases_are_the_listed_ones():
    """A new recipe base must be listed above, so it is checked below."""
    found = {p.stem for p in BASES.glob('*.py') if is_recipe_base(p)}
    assert found == set(NAN_GUARD_ACTION)


@pytest.mark.parametrize('name', sorted(NAN_GUARD_ACTION))
def test_recipe_base_takes_import_and_hooks_from_the_fragment(name):
    path = BASES / f'{name}.py'
    assert './metaformer_runtime.py' in base_list(path)
    own = {k: ast.unparse(v) for k, v in assignments(path).items()}
    hooks = '_base_.metaformer_custom_hooks'
    if NAN_GUARD_ACTION[name] == 'skip':
        hooks += '_skip_nonfinite'
    assert (
        own['custom_imports'],
        own['default_hooks'],
        own['custom_hooks'],
    ) == (
        '_base_.metaformer_custom_imports',
        'dict(checkpoint=_base_.metaformer_checkpoint_hook)',
        hooks,
    )

    fragment = own_settings(FRAGMENT)
    cfg = load(path)
    assert cfg.custom_imports == fragment['metaformer_custom_imports']
    assert cfg.custom_imports == dict(
        imports=['mmmetaformer'], allow_failed_imports=False
    )
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.type == 'AtomicCheckpointHook'
    assert checkpoint.interval == CHECKPOINT_INTERVAL[name]
    assert cfg.default_hooks.logger.type == 'LoggerHook'  # merged, kept
    guard = dict(type='NaNGuardHook')
    if NAN_GUARD_ACTION[name] == 'skip':
        guard['action'] = 'skip'
    assert cfg.custom_hooks == [dict(type='ExactResumeHook'), guard]


def test_every_config_keeps_its_recipe_base_import_and_hooks():
    on_no_base, changes = [], {}
    for path in configs():
        name = str(path.relative_to(REPO_ROOT))
        files, recipes = chain_to_recipe_bases(path)
        if len(recipes) != 1:
            on_no_base.append((name, [p.stem for p in recipes]))
            continue
        changed = set().union(*map(runtime_changes, files))
        if changed:
            changes[name] = sorted(changed)
    assert len(configs()) > 130
    assert on_no_base == [(name, []) for name in DROP_IN]
    assert not changes, f'configs that change the runtime keys: {changes}'


@pytest.mark.parametrize(
    'path', sorted((CONFIGS / 'toy').glob('*.py')), ids=lambda p: p.stem
)
def test_toy_config_resolves_to_its_recipe_base_hooks(path):
    """The toy configs merge their own ``default_hooks`` values (logger and
    checkpoint intervals) into the recipe's: the hooks stay."""
    (recipe,) = chain_to_recipe_bases(path)[1]
    cfg, base = load(path), load(recipe)
    assert cfg.custom_imports == base.custom_imports
    assert cfg.custom_hooks == base.custom_hooks
    toy_hooks = value_of(path, assignments(path)['default_hooks'])
    assert cfg.default_hooks.checkpoint == dict(
        base.default_hooks.checkpoint, **toy_hooks['checkpoint']
    )  # the toy's interval, the recipe's AtomicCheckpointHook
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
