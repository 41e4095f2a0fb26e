"""Layer-wise learning-rate decay for every mmmetaformer backbone.

Fine-tuning recipes of modern backbones (BEiT, ConvNeXt, Swin V2, ...) train
the layers near the input slower than those near the heads: layer ``l`` of
a backbone with ``L`` layers gets ``lr * decay_rate ** (L + 1 - l)`` and the
necks and heads, at ``L + 1``, get ``lr``. mmdet's and mmseg's
``LearningRateDecayOptimizerConstructor`` implement this for class names
containing "ConvNeXt" (and BEiT/MAE in mmseg) by matching parameter names;
any other backbone raises ``NotImplementedError``.

``MetaFormerLayerDecayConstructor`` does the same for every backbone here
(the MetaFormer families and ConvMixer), taking the layers from the
backbone's structure (``stem``, ``stage_modules(i)`` and the blocks in
them), not from name patterns:

``decay_type='layer_wise'``
    layer 0 is the stem; blocks are numbered 1..N through the stages in
    forward order; a stage's downsampling joins its first block (it runs
    just before it). ``N = sum(depths)`` for a MetaFormer (18 for S18, 36
    for S36/M36/B36) and ``depth`` for ConvMixer (its mixer layers).
``decay_type='stage_wise'``
    layer 0 is the stem and stage ``i`` (downsampling and blocks) is layer
    ``i + 1``; ``N = 4``. ConvMixer's stages are the four groups of mixer
    layers that ``frozen_stages`` uses.

Everything else gets the top rate: necks, heads and the backbone's new
layers (output norms, ConvMixer's pyramid adapter), which are not in the
ImageNet weights, as mmdet's ConvNeXt rule does for its output norms.

``paramwise_cfg`` takes mmdet's/mmseg's keys and nothing else:

``decay_rate`` (float in (0, 1], required)
``decay_type`` (``'layer_wise'`` (default) or ``'stage_wise'``)
``num_layers`` (int, optional)
    ``L`` above: the heads are layer ``num_layers + 1``. Defaults to the
    backbone's ``N``. A larger value leaves a gap between the backbone's
    last layer and the heads, as mmseg's ConvNeXt UperNet configs do
    (``stage_wise`` over 4 stages with ``num_layers=12``). A smaller one is
    an error: backbone layers would train faster than the heads.

Weight decay follows ``configs/_base_/metaformer_paramwise.py``: tensors
with two or more dimensions (conv and linear weights) decay; 1-D ones
(norms, layer/residual scales, StarReLU's scalars, biases) get 0. Frozen
parameters (``requires_grad=False``: ``frozen_stages``, stages after the
last emitted one, RandFormer's fixed matrix is a buffer anyway) are left
out of the optimizer, as mmdet's constructor does.

Usage (works under ``default_scope='mmdet'`` and ``'mmseg'``: it is
registered in mmengine's root registry, see ``mmmetaformer/registry.py``)::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        constructor='MetaFormerLayerDecayConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))
"""

import numbers

from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..models.backbones.base import NUM_STAGES, DenseBackboneMixin
from ..models.core.metaformer import MetaFormerStage
from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers')


def _stage_blocks(backbone, stage):
    """The blocks of one stage in forward order, each a list of modules.

    A MetaFormer stage's downsampling is put with its first block; a
    ConvMixer "stage" is a run of mixer layers, each one block.
    """
    blocks = []
    for module in backbone.stage_modules(stage):
        if isinstance(module, MetaFormerStage):
            if len(module.blocks) == 0:
                raise ValueError(
                    f'{type(backbone).__name__} stage {stage} has no '
                    'blocks, so its downsampling has no layer to join'
                )
            blocks.append([module.downsample, module.blocks[0]])
            blocks.extend([block] for block in module.blocks[1:])
        else:
            blocks.append([module])
    return blocks


def backbone_layers(backbone, decay_type):
    """The backbone's layers for ``decay_type``, input side first.

    Returns:
        list[list[nn.Module]]: entry ``l`` holds the modules of layer ``l``
        (entry 0 is ``[backbone.stem]``). Modules in no entry (output
        norms, adapters) are new layers and get the top rate.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(
            f"decay_type '{decay_type}' is not supported; "
            f'valid types: {", ".join(DECAY_TYPES)}'
        )
    layers = [[backbone.stem]]
    for stage in range(NUM_STAGES):
        blocks = _stage_blocks(backbone, stage)
        if decay_type == 'layer_wise':
            layers.extend(blocks)
        else:
            layers.append([m for block in blocks for m in block])
    return layers


def layer_id_of_parameters(backbone, decay_type):
    """Map ``id(parameter)`` to its layer for every backbone parameter that
    belongs to a layer; returns ``(ids, N)`` with ``N`` the top layer."""
    layers = backbone_layers(backbone, decay_type)
    ids = {}
    for layer_id, modules in enumerate(layers):
        for module in modules:
            for param in module.parameters():
                ids[id(param)] = layer_id
    return ids, len(layers) - 1


def _describe_backbone(backbone):
    return type(backbone).__name__ + (
        f'({backbone.arch_settings["depths"]})'
        if 'depths' in getattr(backbone, 'arch_settings', {})
        else ''
    )


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MetaFormerLayerDecayConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay for models with an mmmetaformer backbone.

    See the module docstring for the layer numbering and the keys of
    ``paramwise_cfg``. Builds one parameter group per (layer, decay or no
    decay) with its own ``lr`` and ``weight_decay`` (plus ``lr_scale``,
    ``layer_id`` and ``group_name`` for inspection) and logs the groups.

    Args:
        optim_wrapper_cfg (dict): as ``DefaultOptimWrapperConstructor``;
            the optimizer needs an ``lr``.
        paramwise_cfg (dict): ``decay_rate``, optional ``decay_type`` and
            ``num_layers``. Other keys raise an error: the default
            constructor's options (``custom_keys``, ``norm_decay_mult``, ...)
            are not applied here.
    """

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        name = type(self).__name__
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f'{name} paramwise_cfg has unknown keys {unknown}; valid '
                f'keys: {", ".join(PARAMWISE_KEYS)} (weight decay is fixed: '
                'none on 1-D parameters)'
            )
        decay_rate = paramwise_cfg.get('decay_rate')
        if (
            isinstance(decay_rate, bool)
            or not isinstance(decay_rate, numbers.Real)
            or not 0 < decay_rate <= 1
        ):
            raise ValueError(
                f'{name} paramwise_cfg decay_rate={decay_rate!r}'
                ' must be a number in (0, 1]'
            )
        decay_type = paramwise_cfg.setdefault('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(
                f'{name} paramwise_cfg decay_type '
                f"'{decay_type}' is not supported; valid types:"
                f' {", ".join(DECAY_TYPES)}'
            )
        num_layers = paramwise_cfg.get('num_layers')
        if num_layers is not None and (
            isinstance(num_layers, bool)
            or not isinstance(num_layers, int)
            or num_layers < 1
        ):
            raise ValueError(
                f'{name} paramwise_cfg num_layers='
                f'{num_layers!r} must be a positive int (or '
                'left out: the backbone decides)'
            )
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_lr is None:
            raise ValueError(
                f'{name} needs optimizer.lr: every group lr is '
                'a fraction of it'
            )

    def add_params(self, params, module, prefix='', **kwargs):
        """Append one parameter group per (layer, decay) to ``params``.

        Args:
            params (list[dict]): param groups, extended in place.
            module (nn.Module): the model (with a ``backbone`` attribute),
                or an mmmetaformer backbone alone.
        """
        name = type(self).__name__
        backbone = getattr(module, 'backbone', module)
        if not isinstance(backbone, DenseBackboneMixin):
            raise TypeError(
                f'{name} needs a model whose backbone is an mmmetaformer '
                'backbone (PoolFormer, PoolFormerV2, IdentityFormer, '
                'RandFormer, ConvFormer, CAFormer, MetaFormer, ConvMixer); '
                f'got {type(backbone).__name__}'
            )
        cfg = self.paramwise_cfg
        decay_type, decay_rate = cfg['decay_type'], cfg['decay_rate']
        layer_ids, backbone_top = layer_id_of_parameters(backbone, decay_type)
        num_layers = cfg.get('num_layers')
        if num_layers is None:
            num_layers = backbone_top
        elif num_layers < backbone_top:
            raise ValueError(
                f'{name} paramwise_cfg num_layers={num_layers} is below the '
                f'{backbone_top} {decay_type} layers of '
                f'{_describe_backbone(backbone)} (stem 0, layers '
                f'1..{backbone_top}), which would then train faster than '
                f'the heads; use num_layers={backbone_top} or leave it out'
            )
        head_layer = num_layers + 1

        groups, frozen = {}, 0
        for param_name, param in module.named_parameters(prefix=prefix):
            if not param.requires_grad:
                frozen += 1
                continue
            layer_id = layer_ids.get(id(param), head_layer)
            decay = param.ndim > 1
            key = (layer_id, decay)
            if key not in groups:
                scale = decay_rate ** (head_layer - layer_id)
                groups[key] = dict(
                    params=[],
                    param_names=[],
                    lr=self.base_lr * scale,
                    lr_scale=scale,
                    layer_id=layer_id,
                    group_name=f'layer_{layer_id}_'
                    f'{"decay" if decay else "no_decay"}',
                )
                if not decay:
                    groups[key]['weight_decay'] = 0.0
                elif self.base_wd is not None:  # else the optimizer default
                    groups[key]['weight_decay'] = self.base_wd
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(param_name)
        ordered = [
            groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))
        ]
        if get_dist_info()[0] == 0:
            self._log_groups(
                backbone, ordered, num_layers, backbone_top, frozen
            )
        for group in ordered:
            del group['param_names']  # logged; kept out of optimizer state
        params.extend(ordered)

    def _log_groups(self, backbone, groups, num_layers, backbone_top, frozen):
        cfg = self.paramwise_cfg
        lines = [
            f'{type(self).__name__}: {_describe_backbone(backbone)}, '
            f'decay_type={cfg["decay_type"]}, '
            f'decay_rate={cfg["decay_rate"]}, num_layers={num_layers} '
            f'(backbone: stem 0, layers 1..{backbone_top}; heads, necks and '
            f'new layers: {num_layers + 1}); base lr={self.base_lr}, '
            f'weight_decay={self.base_wd}; {len(groups)} groups, {frozen} '
            'frozen tensors left out:'
        ]
        for group in groups:
            names = group['param_names']
            span = (
                names[0] if len(names) == 1 else f'{names[0]} .. {names[-1]}'
            )
            lines.append(
                f'  {group["group_name"]}: lr_scale={group["lr_scale"]:.6g} '
                f'lr={group["lr"]:.6g} '
                f'weight_decay={group.get("weight_decay", "default")}'
                f' tensors={len(names)} ({span})'
            )
        print_log('\n'.join(lines), logger='current')
