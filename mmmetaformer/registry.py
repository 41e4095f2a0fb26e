"""Where mmmetaformer registers its modules, and why there.

mmdet's and mmseg's registries are children of mmengine's root registries.
A lookup such as ``MODELS.get('PoolFormer')`` made under ``default_scope='mmdet'``
(or ``'mmseg'``) searches the scope's own registry and then walks up to the
root; it never visits a sibling scope. Registering in the *root* registries is
therefore the one place that both scopes see, and it works whether mmdet,
mmseg, both or neither are installed. Users write plain ``type='PoolFormer'``
(or ``act_cfg=dict(type='StarReLU')``) after
``custom_imports=dict(imports=['mmmetaformer'], allow_failed_imports=False)``.
The same holds for ``OPTIM_WRAPPER_CONSTRUCTORS``: the layer-decay
constructor is found from both scopes by its name (which differs from
mmdet's and mmseg's own, so theirs do not shadow it).
"""
from mmengine.registry import (MODEL_WRAPPERS, MODELS,
                               OPTIM_WRAPPER_CONSTRUCTORS)

__all__ = ['MODELS', 'MODEL_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS']
