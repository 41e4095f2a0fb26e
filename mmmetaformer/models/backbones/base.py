"""What every registered backbone adds to its plain-PyTorch trunk.

``DenseBackboneMixin`` gives a trunk the mmdet/mmseg backbone contract:
``out_indices``, output norms, ``frozen_stages``, ``norm_eval``, ``with_cp``
and ``init_cfg`` loading of every published weight format. A registered
backbone is ``class X(DenseBackboneMixin, Trunk, BaseModule)``: the trunk's
``super().__init__()`` reaches ``BaseModule``, and the state-dict keys stay
the trunk's own (timm's layout) plus ``out_norms.<i>``.

The trunk provides ``stem`` (module) and ``set_with_cp(flag)``. The
registered class (``MetaFormer``, ``ConvMixer``) provides the two methods
that map the trunk onto four stages: ``stage_modules(i)`` (the modules
making up stage ``i``, which ``frozen_stages`` freezes) and
``forward_outputs(x, indices)`` (the NCHW outputs of the given stages, in
order, before the output norms).
"""

import copy

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import FORMATS, load_pretrained
from ..registration import build_norm

NUM_STAGES = 4
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'format')


def resolve_arch(owner, arch, zoo, valid_keys, required_keys, defaults=None):
    """Turn ``arch`` (a name in ``zoo`` or a dict) into a full arch dict.

    Raises:
        ValueError: unknown name (listing the valid ones), unknown or
            missing dict keys (listing the valid ones).
    """
    if isinstance(arch, str):
        name = arch.lower()
        if name not in zoo:
            raise ValueError(
                f"Unknown arch '{arch}' for {owner}. Valid archs: "
                f'{", ".join(zoo)}; or pass a dict with keys '
                f'{", ".join(valid_keys)}.'
            )
        spec = zoo[name]
    elif isinstance(arch, dict):
        spec = arch
    else:
        raise TypeError(
            f'{owner} arch must be a name or a dict, got '
            f'{type(arch).__name__}: {arch!r}'
        )
    unknown = sorted(set(spec) - set(valid_keys))
    if unknown:
        raise ValueError(
            f'Unknown arch keys {unknown} for {owner}; valid '
            f'keys: {", ".join(valid_keys)}'
        )
    full = dict(defaults or {}, **copy.deepcopy(dict(spec)))
    missing = [k for k in required_keys if k not in full]
    if missing:
        raise ValueError(f'{owner} arch dict lacks required keys {missing}')
    return full


def reject_unknown_kwargs(owner, unknown, signature_owner):
    """Raise a TypeError naming unknown keyword args and the valid ones."""
    if unknown:
        import inspect

        valid = [
            p
            for p in inspect.signature(signature_owner).parameters
            if p not in ('self', 'unknown_kwargs')
        ]
        raise TypeError(
            f'{owner} got unknown arguments '
            f'{sorted(unknown)}; valid arguments: '
            f'{", ".join(valid)}'
        )


def check_flag(owner, name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f'{owner} {name}={value!r} is invalid; valid: True, False'
        )


def reject_pretrained(owner, pretrained):
    """Refuse a ``pretrained`` string that mmseg's EncoderDecoder passes on.

    mmseg's ``EncoderDecoder`` hands its ``model.pretrained`` to the backbone
    as ``backbone.pretrained``; mmseg's ResNet-based bases set it to a ResNet
    checkpoint (e.g. ``open-mmlab://resnet50_v1c``). ``None`` is accepted so
    that configs written for mmseg 0.x style backbones build.

    Raises:
        ValueError: ``pretrained`` is not ``None``; the message says where it
            came from and the fix.
    """
    if pretrained is None:
        return
    raise ValueError(
        f"{owner} got pretrained={pretrained!r}. mmseg's EncoderDecoder "
        f"passes the config's model.pretrained to the backbone, and the "
        f"base config set it for the backbone it was written for (mmseg's "
        f'ResNet bases name a ResNet checkpoint): it is not a {owner} '
        f'checkpoint. Set model.pretrained=None in your config (or '
        f'--cfg-options model.pretrained=None) and load {owner} weights '
        f"through model.backbone.init_cfg=dict(type='Pretrained', "
        f'checkpoint=PATH_OR_URL).'
    )


class DenseBackboneMixin:
    """Backbone contract shared by MetaFormer and ConvMixer.

    Subclasses call ``_setup_outputs`` at the end of ``__init__``.
    """

    # State-dict prefixes of layers that ImageNet checkpoints do not have.
    new_layer_prefixes = ('out_norms.',)

    def _setup_outputs(
        self,
        dims,
        out_indices,
        out_norm_cfg,
        frozen_stages,
        norm_eval,
        with_cp,
        init_cfg,
    ):
        """Validate the common arguments and build the output norms.

        Args:
            dims (sequence[int]): channels of the four stage outputs.
        """
        name = type(self).__name__
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        bad = [
            i
            for i in out_indices
            if not isinstance(i, int) or not 0 <= i < NUM_STAGES
        ]
        if bad or not out_indices or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f'{name} out_indices {out_indices} must be distinct stage '
                f'indices in 0..{NUM_STAGES - 1} (at least one)'
            )
        if not isinstance(frozen_stages, int) or not (
            -1 <= frozen_stages <= NUM_STAGES
        ):
            raise ValueError(
                f'{name} frozen_stages={frozen_stages!r} must be an int in '
                f'-1..{NUM_STAGES} (-1 freezes nothing, k freezes the stem '
                f'and stages 0..k-1)'
            )
        if init_cfg is not None:
            init_cfg = self._check_init_cfg(init_cfg)
        self.out_indices = tuple(sorted(out_indices))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.init_cfg = copy.deepcopy(init_cfg)
        self.out_channels = tuple(dims[i] for i in self.out_indices)
        self.out_strides = tuple(4 * 2**i for i in self.out_indices)
        # Only emitted outputs get a norm: an unused one breaks DDP.
        self.out_norms = nn.ModuleDict(
            {
                str(i): build_norm(out_norm_cfg, dims[i])
                if out_norm_cfg is not None
                else nn.Identity()
                for i in self.out_indices
            }
        )
        self.set_with_cp(with_cp)
        for module in self.idle_modules():
            module.requires_grad_(False)
        self._freeze_stages()

    def idle_modules(self):
        """Modules no emitted output depends on.

        Stages after the last emitted one never run. They stay built so
        published weights load strictly, but hold no trainable parameter:
        DDP rejects parameters that get no gradient.
        """
        return [
            module
            for i in range(self.out_indices[-1] + 1, NUM_STAGES)
            for module in self.stage_modules(i)
        ]

    def _check_init_cfg(self, init_cfg):
        name = type(self).__name__
        if not isinstance(init_cfg, dict):
            return init_cfg  # list of initialisers: mmengine handles it
        if init_cfg.get('type') != 'Pretrained':
            return init_cfg
        unknown = sorted(set(init_cfg) - set(PRETRAINED_KEYS))
        if unknown:
            raise ValueError(
                f'{name} init_cfg has unknown keys {unknown}; '
                f'valid keys: {", ".join(PRETRAINED_KEYS)}'
            )
        if not init_cfg.get('checkpoint'):
            raise ValueError(
                f"{name} init_cfg type='Pretrained' needs "
                f'checkpoint=PATH_OR_URL'
            )
        fmt = init_cfg.get('format', 'auto')
        if fmt != 'auto' and fmt not in FORMATS:
            raise ValueError(
                f"{name} init_cfg format '{fmt}' is unknown; "
                f'valid formats: auto, {", ".join(FORMATS)}'
            )
        return init_cfg

    def init_weights(self):
        """Load ``init_cfg`` Pretrained weights strictly (any format)."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_pretrained(
                self,
                cfg['checkpoint'],
                fmt=cfg.get('format', 'auto'),
                prefix=cfg.get('prefix'),
            )
            self._is_init = True
        else:
            super().init_weights()

    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.stem
        for i in range(self.frozen_stages):
            yield from self.stage_modules(i)

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            module.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, x):
        """``[B, C_in, H, W]`` -> tuple of ``[B, out_channels[k], H_i, W_i]``.

        One tensor per ``out_indices`` entry, at stride ``4 * 2**i``, in
        contiguous NCHW memory whatever the layout inside (stock heads such
        as PSANet's ``view`` their input).
        """
        feats = self.forward_outputs(x, self.out_indices)
        return tuple(
            self.out_norms[str(i)](feat).contiguous()
            for i, feat in zip(self.out_indices, feats)
        )
