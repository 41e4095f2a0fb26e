"""Parameters and MACs of a backbone arch or of a detection/segmentation model.

MACs are multiply-accumulates counted like fvcore (the papers call them
FLOPs); ``tools/mmmetaformer_tools/complexity.py`` lists what is counted.

Usage::

    # one backbone (built with out_norm_cfg=None), default 224x224
    python tools/analysis/get_flops.py --backbone CAFormer --arch s18
    python tools/analysis/get_flops.py --backbone PoolFormer --arch s12 \\
        --shape 512 512
    # every registered arch at 224x224 against the published figures
    python tools/analysis/get_flops.py --all-backbones [--only caformer]
    # a config: backbone + neck (model.extract_feat); heads are not counted
    python tools/analysis/get_flops.py configs/xxx.py --shape 800 1216
    # ... plus the dense heads (single-stage detectors, segmentors)
    python tools/analysis/get_flops.py configs/xxx.py --with-heads

For a config the default input is 800x1216 (mmdet) or 512x512 (mmseg).
"""

import argparse
import os.path as osp
import sys
import time

# this clone's package, and the tools' own modules (mmmetaformer_tools)
TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [osp.dirname(TOOLS), TOOLS]

from mmmetaformer_tools.launch import LaunchError, load_config, run_tool

import torch

DEFAULT_CONFIG_SHAPES = dict(mmdet=(800, 1216), mmseg=(512, 512))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Count parameters and MACs (fvcore-style FLOPs) of a '
        "backbone or of a config's backbone + neck"
    )
    parser.add_argument(
        'config',
        nargs='?',
        help='mmdet/mmseg config file (counts backbone + '
        'neck via model.extract_feat)',
    )
    parser.add_argument(
        '--backbone', help='registered backbone type, e.g. CAFormer'
    )
    parser.add_argument('--arch', help='arch of --backbone, e.g. s18')
    parser.add_argument(
        '--all-backbones',
        action='store_true',
        help='table of every registered arch at 224x224 '
        'with the published figures',
    )
    parser.add_argument(
        '--only',
        nargs='+',
        metavar='NAME',
        help='with --all-backbones: keep archs whose name '
        '(e.g. caformer_s18) contains one of these',
    )
    parser.add_argument(
        '--shape', type=int, nargs='+', help='input H [W] (W defaults to H)'
    )
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument(
        '--with-heads',
        action='store_true',
        help='with a config: count model._forward(x) '
        '(backbone, neck and dense heads, no post-'
        'processing); single-stage detectors and '
        'segmentors only',
    )
    return parser.parse_args(argv)


def _shape(args, default):
    if not args.shape:
        return tuple(default)
    if len(args.shape) > 2 or min(args.shape) < 32:
        raise LaunchError(
            f'--shape takes H [W], each at least 32; got {args.shape}'
        )
    return (args.shape[0], args.shape[-1])


def _fmt_unsupported(unsupported):
    if not unsupported:
        return 'none'
    return ', '.join(f'{op} x{n}' for op, n in sorted(unsupported.items()))


def backbone_types():
    """Registered backbone class name -> family (as in arch names)."""
    from mmmetaformer.models.backbones.metaformer import FAMILY_CLASSES

    types = {cls: family for family, cls in FAMILY_CLASSES.items()}
    types['MetaFormer'] = None
    return types


def build_backbone(type_name, arch):
    import mmmetaformer  # noqa: F401  (registers the backbones)
    from mmmetaformer.registry import MODELS

    types = backbone_types()
    if type_name not in types:
        raise LaunchError(
            f"unknown backbone '{type_name}'; valid backbones: "
            f'{", ".join(types)}'
        )
    cls = MODELS.get(type_name)
    if arch is None:
        raise LaunchError(
            f'--backbone {type_name} needs --arch; valid '
            f'archs: {", ".join(cls.arch_zoo)}'
        )
    try:
        return MODELS.build(dict(type=type_name, arch=arch, out_norm_cfg=None))
    except (ValueError, TypeError) as exc:
        raise LaunchError(str(exc)) from exc


def main_backbone(args):
    from mmmetaformer_tools.complexity import count_backbone

    model = build_backbone(args.backbone, args.arch)
    shape = _shape(args, (224, 224))
    result = count_backbone(model, shape, batch_size=args.batch_size)
    print(
        f'Backbone: {args.backbone} arch={args.arch} (out_norm_cfg=None, '
        f'no classifier head)'
    )
    print(f'Input: {args.batch_size}x3x{shape[0]}x{shape[1]}')
    print(f'Params: {result["params"] / 1e6:.3f} M')
    print(f'MACs: {result["macs"] / 1e9:.3f} G')
    print(
        'By operator (G): '
        + ', '.join(
            f'{op} {n / 1e9:.4f}'
            for op, n in sorted(
                result['by_operator'].items(), key=lambda kv: -kv[1]
            )
        )
    )
    print(
        f'Ops not counted (no handle): '
        f'{_fmt_unsupported(result["unsupported"])}'
    )


def all_rows(only=None):
    """``(name, family, cls, arch)`` of every registered arch."""
    import mmmetaformer  # noqa: F401
    from mmmetaformer.registry import MODELS

    rows = []
    for cls, family in backbone_types().items():
        if family is None:  # MetaFormer: its archs are the families' archs
            continue
        for arch in MODELS.get(cls).arch_zoo:
            name = f'{family}_{arch}'
            if only and not any(token.lower() in name for token in only):
                continue
            rows.append((name, family, cls, arch))
    return rows


def main_all(args):
    from mmmetaformer_tools.complexity import (
        REFERENCE,
        count_backbone,
        head_macs,
        head_params,
    )

    from mmmetaformer.registry import MODELS

    shape = _shape(args, (224, 224))
    rows = all_rows(args.only)
    if not rows:
        raise LaunchError(
            f'--only {args.only} matches no arch; names look '
            f'like {", ".join(r[0] for r in all_rows()[:3])}'
        )
    print(
        f'Input 1x3x{shape[0]}x{shape[1]}. Backbones without output norms '
        'or classifier; "+head" adds the ImageNet head (Linear, or the MLP '
        'head of ConvFormer/CAFormer) to compare with the published '
        'classifier figures. ConvMixer includes its pyramid adapter, so '
        'it has no classifier equivalent.\n'
    )
    print(
        '| model | params (M) | +head (M) | ref params (M) | MACs (G) | '
        '+head (G) | ref MACs (G) | diff |'
    )
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for name, family, cls, arch in rows:
        model = MODELS.build(dict(type=cls, arch=arch, out_norm_cfg=None))
        result = count_backbone(model, shape)
        params, macs = result['params'], result['macs']
        if family == 'convmixer':
            cls_params = cls_macs = None
        else:
            dim = model.arch_settings['dims'][-1]
            cls_params = params + head_params(family, dim)
            cls_macs = macs + head_macs(family, dim)
        ref = REFERENCE.get(name) if shape == (224, 224) else None
        cells = [
            name,
            f'{params / 1e6:.2f}',
            '-' if cls_params is None else f'{cls_params / 1e6:.2f}',
            f'{ref["params"] / 1e6:.1f}' if ref else '-',
            f'{macs / 1e9:.3f}',
            '-' if cls_macs is None else f'{cls_macs / 1e9:.3f}',
            f'{ref["macs"] / 1e9:.1f}' if ref else '-',
            f'{(cls_macs - ref["macs"]) / ref["macs"]:+.1%}' if ref else '-',
        ]
        print('| ' + ' | '.join(cells) + ' |')
        if result['unsupported']:
            print(
                f'<!-- {name}: not counted: '
                f'{_fmt_unsupported(result["unsupported"])} -->'
            )
        del model
        sys.stdout.flush()


def main_config(args):
    from mmmetaformer_tools.complexity import count_macs, count_params

    from mmengine.registry import init_default_scope

    cfg, scope = load_config(args.config)
    init_default_scope(cfg.default_scope)
    import mmmetaformer  # noqa: F401
    from mmmetaformer.registry import MODELS

    try:
        model = MODELS.build(cfg.model)
    except Exception as exc:
        raise LaunchError(
            f'Cannot build the model of {args.config}: '
            f'{type(exc).__name__}: {exc}'
        ) from exc
    if not hasattr(model, 'extract_feat'):
        raise LaunchError(
            f'{type(model).__name__} has no extract_feat; '
            'only mmdet detectors and mmseg segmentors are '
            'supported'
        )
    shape = _shape(args, DEFAULT_CONFIG_SHAPES[scope])
    x = torch.randn(args.batch_size, 3, *shape)
    start = time.time()
    if args.with_heads:
        counted = [
            name
            for name, _ in model.named_children()
            if name != 'data_preprocessor'
        ]
        how = (
            'via model._forward (tensor mode); post-processing (NMS, '
            'resizing) is NOT counted'
        )
        try:
            result = count_macs(model, x, fn=lambda m, x: m._forward(x))
        except (TypeError, AssertionError, AttributeError) as exc:
            # heads whose tensor path reads data samples (two-stage
            # detectors, DINO, Mask2Former) fail without them, each its way
            raise LaunchError(
                f'{type(model).__name__}._forward needs data samples '
                f'({type(exc).__name__}: {exc}); its heads cannot be counted '
                'from an image tensor alone: drop --with-heads to count '
                'backbone + neck'
            ) from exc
    else:
        counted = [
            name
            for name in ('backbone', 'neck')
            if getattr(model, name, None) is not None
        ]
        how = (
            'via model.extract_feat; the heads (and post-processing) '
            'are NOT counted (--with-heads counts dense heads)'
        )
        result = count_macs(model, x, fn=lambda m, x: m.extract_feat(x))
    counted_params = sum(
        count_params(getattr(model, name)) for name in counted
    )
    print(f'Config: {args.config} ({scope}, {type(model).__name__})')
    print(f'Input: {args.batch_size}x3x{shape[0]}x{shape[1]}')
    print(f'Counted: {" + ".join(counted)} {how}')
    print(
        f'Params: {counted_params / 1e6:.3f} M counted part, '
        f'{count_params(model) / 1e6:.3f} M whole model'
    )
    print(f'MACs: {result["macs"] / 1e9:.3f} G')
    print(
        f'Ops not counted (no handle): '
        f'{_fmt_unsupported(result["unsupported"])}'
    )
    print(f'({time.time() - start:.1f} s)')


def main(argv=None):
    args = parse_args(argv)
    modes = [bool(args.config), bool(args.backbone), args.all_backbones]
    if sum(modes) != 1:
        raise LaunchError(
            'give exactly one of: a config file, --backbone '
            'TYPE --arch ARCH, or --all-backbones'
        )
    if args.with_heads and not args.config:
        raise LaunchError('--with-heads only applies to a config file')
    if args.batch_size < 1:
        raise LaunchError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.all_backbones:
        return main_all(args)
    if args.backbone:
        return main_backbone(args)
    return main_config(args)


if __name__ == '__main__':
    run_tool(main)
