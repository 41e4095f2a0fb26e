"""Where mmmetaformer registers its modules, and why there.

mmdet's and mmseg's registries are children of mmengine's root registries.
A lookup such as ``MODELS.get('PoolFormer')`` made under ``default_scope='mmdet'``
(or ``'mmseg'``) searches the scope's own registry and then walks up to the
root; it never visits a sibling scope. Registering in the *root* registries is
therefore the one place that both scopes see, and it works whether mmdet,
mmseg, both or neither are installed. Users write plain ``type='PoolFormer'``
(or ``act_cfg=dict(type='StarReLU')``) after
``custom_imports=dict(imports=['mmmetaformer'], allow_failed_imports=False)``.
"""
from mmengine.registry import MODEL_WRAPPERS, MODELS

__all__ = ['MODELS', 'MODEL_WRAPPERS']
