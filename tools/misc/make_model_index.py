"""Check the hand-kept model index against the configs and the backbones.

``configs/metafile.yml`` (imported by ``model-index.yml``) is the record,
written by hand in OpenMMLab's metafile format. This tool reads it and
reports every way it disagrees with the repository:

* every config in ``configs/*.py`` and ``configs/examples/*.py`` has an
  entry (the toy configs are test set-ups, not models);
* every entry's ``Config`` exists, names are unique, every ``In
  Collection`` is a collection, ``model-index.yml`` imports the metafile;
* each entry's ``Pretrained`` is an official ImageNet checkpoint and its
  ``Pretrained Hub`` that checkpoint's Hugging Face Hub id
  (``pretrained_url`` / ``pretrained_hub_id`` in
  ``mmmetaformer/models/archs.py``);
* each entry's ``Parameters`` and ``FLOPs`` are what its ``Complexity``
  command (``tools/analysis/get_flops.py --backbone TYPE --arch ARCH``)
  counts: the backbone without output norms or classifier on one 224x224
  image;
* with ``--configs``, each entry's backbone is the one its config builds
  and starts from its ``Pretrained Hub`` id (this parses every config
  with its mmdet/mmseg bases: about a second each).

Usage::

    python tools/misc/make_model_index.py             # all but --configs
    python tools/misc/make_model_index.py --configs   # + parse every config
    python tools/misc/make_model_index.py --no-flops  # parameters only
    python tools/misc/make_model_index.py --root COPY # check another tree

Exit status 0 when the index agrees, 1 with one line per problem otherwise.
"""

import argparse
import importlib.util
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_GLOBS = ('configs/*.py', 'configs/examples/*.py')
COMPLEXITY = re.compile(
    r'python tools/analysis/get_flops\.py --backbone '
    r'(\w+) --arch (\S+)'
)


def load_get_flops(root=REPO_ROOT):
    """``tools/analysis/get_flops.py`` as a module: its backbone builder and
    counter are what the metafile's figures must equal."""
    path = Path(root) / 'tools' / 'analysis' / 'get_flops.py'
    spec = importlib.util.spec_from_file_location('get_flops', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_index(root):
    """``(model_index, [(metafile path, metafile dict)])``."""
    import yaml

    root = Path(root)
    with open(root / 'model-index.yml') as f:
        model_index = yaml.safe_load(f) or {}
    metafiles = []
    for rel in model_index.get('Import', []):
        path = root / rel
        if path.is_file():
            with open(path) as f:
                metafiles.append((path, yaml.safe_load(f) or {}))
        else:
            metafiles.append((path, None))
    return model_index, metafiles


def config_paths(root):
    root = Path(root)
    paths = []
    for pattern in CONFIG_GLOBS:
        paths += sorted(root.glob(pattern))
    return [p.relative_to(root).as_posix() for p in paths]


def backbone_of(model):
    """``(type, arch)`` from the entry's Complexity command, or None."""
    command = model.get('Metadata', {}).get('Complexity', '')
    match = COMPLEXITY.fullmatch(str(command))
    return match.groups() if match else None


def check_structure(root):
    """Problems with the index's files, entries and config coverage."""
    problems = []
    model_index, metafiles = read_index(root)
    if not metafiles:
        return ['model-index.yml imports no metafile'], []
    models, collections = [], set()
    for path, data in metafiles:
        if data is None:
            problems.append(
                f'model-index.yml imports {path.name}, which does not exist'
            )
            continue
        collections |= {c['Name'] for c in data.get('Collections', [])}
        models += data.get('Models', [])
    names = [m.get('Name') for m in models]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f'{name}: listed {names.count(name)} times')
    listed = set()
    for model in models:
        name = model.get('Name', '?')
        config = model.get('Config')
        listed.add(config)
        if not config or not (Path(root) / config).is_file():
            problems.append(f'{name}: its config {config} does not exist')
        if model.get('In Collection') not in collections:
            problems.append(
                f'{name}: collection {model.get("In Collection")}'
                f' is not one of {sorted(collections)}'
            )
        meta = model.get('Metadata', {})
        if backbone_of(model) is None:
            problems.append(
                f'{name}: Complexity must be "python tools/'
                'analysis/get_flops.py --backbone TYPE --arch '
                f'ARCH", got {meta.get("Complexity")!r}'
            )
        for key in ('Parameters', 'FLOPs'):
            if not isinstance(meta.get(key), int) or meta[key] <= 0:
                problems.append(
                    f'{name}: {key} must be a positive integer, '
                    f'got {meta.get(key)!r}'
                )
    for config in config_paths(root):
        if config not in listed:
            problems.append(f'{config}: not listed in the metafile')
    return problems, models


def check_pretrained(models):
    """Problems where ``Pretrained`` is not a published checkpoint or
    ``Pretrained Hub`` is not its Hub id."""
    from mmmetaformer.models.archs import published_weights

    published = published_weights()
    problems = []
    for model in models:
        meta = model.get('Metadata', {})
        url, hub_id = meta.get('Pretrained'), meta.get('Pretrained Hub')
        if url not in published:
            problems.append(
                f'{model["Name"]}: Pretrained {url} is not an '
                'official checkpoint (pretrained_url)'
            )
        elif hub_id != published[url]:
            problems.append(
                f'{model["Name"]}: Pretrained Hub {hub_id} but '
                f'{url} is on the Hub as {published[url]} '
                f'(write Pretrained Hub: {published[url]})'
            )
    return problems


def check_complexity(models, get_flops, flops=True, only=None, progress=False):
    """Problems where an entry's Parameters/FLOPs differ from the count.

    Args:
        flops (bool): also count MACs (a traced forward per backbone);
            otherwise parameters only, built on the meta device.
        only (set | None): ``(type, arch)`` pairs to check; default all.
        progress (bool): show mmengine's progress bar over the backbones.
    """
    from mmmetaformer_tools.complexity import count_backbone, count_params

    import torch
    from mmengine.utils import ProgressBar

    problems, counted = [], {}
    keys = {backbone_of(m) for m in models} - {None}
    bar = (
        ProgressBar(len(keys if only is None else keys & set(only)))
        if progress
        else None
    )
    for model in models:
        key = backbone_of(model)
        if key is None or (only is not None and key not in only):
            continue
        if key not in counted:
            if flops:
                torch.manual_seed(0)
                result = count_backbone(
                    get_flops.build_backbone(*key), (224, 224)
                )
                counted[key] = dict(
                    Parameters=result['params'], FLOPs=result['macs']
                )
            else:
                with torch.device('meta'):
                    backbone = get_flops.build_backbone(*key)
                counted[key] = dict(Parameters=count_params(backbone))
            if bar:
                bar.update()
        for field, value in counted[key].items():
            stored = model['Metadata'].get(field)
            if stored != value:
                problems.append(
                    f'{model["Name"]}: {field} {stored} but '
                    f'get_flops.py --backbone {key[0]} --arch {key[1]} '
                    f'counts {value}'
                )
    return problems


def check_configs(models, root, names=None):
    """Problems where the entry's backbone is not the config's, or the
    config's ``init_cfg`` checkpoint is not the entry's Pretrained Hub."""
    from mmengine.config import Config

    problems = []
    for model in models:
        if names is not None and model['Name'] not in names:
            continue
        cfg = Config.fromfile(str(Path(root) / model['Config']))
        backbone = cfg.model.backbone
        built = (backbone.type, str(backbone.arch))
        if backbone_of(model) != built:
            problems.append(
                f'{model["Name"]}: the entry says '
                f'{backbone_of(model)}, {model["Config"]} builds '
                f'{built}'
            )
        init_cfg = backbone.get('init_cfg') or {}
        hub_id = model.get('Metadata', {}).get('Pretrained Hub')
        if init_cfg.get('checkpoint') != hub_id:
            problems.append(
                f'{model["Name"]}: {model["Config"]} starts from '
                f"{init_cfg.get('checkpoint')}, the entry's "
                f'Pretrained Hub is {hub_id}'
            )
    return problems


def validate(
    root=REPO_ROOT,
    flops=True,
    configs=False,
    only=None,
    config_names=None,
    progress=False,
):
    """Every problem found, one line each (empty: the index agrees)."""
    problems, models = check_structure(root)
    if problems:
        return problems  # figures of a broken index would only add noise
    problems += check_pretrained(models)
    problems += check_complexity(
        models, load_get_flops(root), flops=flops, only=only, progress=progress
    )
    if configs or config_names:
        problems += check_configs(models, root, config_names)
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--root',
        default=str(REPO_ROOT),
        help='repository root to check (default: this one)',
    )
    parser.add_argument(
        '--no-flops',
        action='store_true',
        help='check parameters only (no traced forward)',
    )
    parser.add_argument(
        '--configs',
        action='store_true',
        help="also check each entry's backbone against its "
        'config (parses every config)',
    )
    args = parser.parse_args(argv)
    # this clone's package, and the tools' own modules (mmmetaformer_tools)
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / 'tools')]
    problems = validate(
        args.root, flops=not args.no_flops, configs=args.configs, progress=True
    )
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f'{len(problems)} problems in the model index', file=sys.stderr)
        return 1
    _, metafiles = read_index(args.root)
    count = sum(len(data.get('Models', [])) for _, data in metafiles)
    print(f'model index agrees with the repository: {count} configs')
    return 0


if __name__ == '__main__':
    sys.exit(main())
