# What every recipe base adds to mmdet's or mmseg's runtime: the import
# that registers mmmetaformer, atomic checkpoints, exact resume and the
# non-finite-loss guard. Each recipe base in configs/_base_ lists this
# file in ``_base_`` and sets three keys from these values:
#     custom_imports = _base_.metaformer_custom_imports
#     default_hooks = dict(checkpoint=_base_.metaformer_checkpoint_hook)
#     custom_hooks = _base_.metaformer_custom_hooks  # or ..._skip_nonfinite
# They are named values, not the keys themselves: mmengine refuses a key
# that two bases define, and the mmdet/mmseg bases define ``default_hooks``
# (default_runtime) and some ``custom_imports`` (the ConvNeXt recipes
# import mmpretrain, mmseg's Mask2Former mmdet.models), so each base sets
# the keys itself, over its mmdet/mmseg base. ``default_hooks`` merges key
# by key: only the checkpoint hook's type changes, the recipe's interval and
# options stay. ``custom_hooks`` is a list, replaced whole. The named
# values stay in every resolved config too (as metaformer_paramwise_cfg);
# nothing reads them there.
# tests/test_runtime_fragment.py checks every base and leaf resolves so.

# Registers the MetaFormer backbones, so every leaf also builds in mmdet's
# and mmseg's own tools (tools/train.py, tools/test.py, mim, inferencers),
# which never import mmmetaformer themselves. It replaces the recipes' own
# imports (mmpretrain for their ConvNeXt; mmseg's Mask2FormerHead imports
# the mmdet parts it uses itself).
metaformer_custom_imports = dict(
    imports=['mmmetaformer'], allow_failed_imports=False
)

# Checkpoints are written atomically: a kill or a full disk mid-save never
# leaves a truncated iter_N.pth or a broken last_checkpoint
# (mmmetaformer/engine/checkpoint_hooks.py; mmengine's CheckpointHook
# options all apply).
metaformer_checkpoint_hook = dict(type='AtomicCheckpointHook')

# Checkpoints carry the random state, so `--resume` continues a killed run
# exactly as if it had not stopped (same file), in both kinds of loop:
# epoch-based (the R-CNNs, RetinaNet, DINO; from an end-of-epoch
# checkpoint) and iteration-based (Semantic FPN, UperNet, Mask2Former;
# restored after mmengine replays the data loader).
metaformer_exact_resume_hook = dict(type='ExactResumeHook')

# Stops at the first non-finite loss (mmmetaformer/engine/nan_guard.py).
# Recipes trained with AMP (or with --amp) set ``action='skip'``: skip up
# to 10 consecutive such steps, then stop.
metaformer_nan_guard_hook = dict(type='NaNGuardHook')

# The custom hooks of a recipe base: exact resume, and the guard that stops
# at a non-finite loss, or (recipes trained with AMP, or that allow --amp)
# skips such steps, up to 10 in a row.
metaformer_custom_hooks = [
    metaformer_exact_resume_hook,
    metaformer_nan_guard_hook,
]
metaformer_custom_hooks_skip_nonfinite = [
    metaformer_exact_resume_hook,
    dict(metaformer_nan_guard_hook, action='skip'),
]
