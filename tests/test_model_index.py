"""model-index.yml and configs/metafile.yml cannot drift from the configs.

* The metafile records a fingerprint of its inputs (the generator, the arch
  table, every indexed config and the local bases they inherit): a config
  edited without regenerating the index fails here. mmdet's/mmseg's own
  bases are pinned with the packages.
* The content is checked by rebuilding a few entries from their configs
  exactly as ``tools/misc/make_model_index.py`` does, and by recounting the
  parameters of each family's smallest backbone (meta device) and one
  backbone's FLOPs. Rebuilding all 100+ entries (``make_model_index.py
  --check``) parses every config with its mmdet/mmseg bases: about half a
  minute of CPU, so not here.
"""
import functools
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from mmengine.utils import get_installed_path

from tests.helpers import REPO_ROOT

REGENERATE = 'run python tools/misc/make_model_index.py'


@functools.lru_cache(maxsize=None)
def index_tool():
    spec = importlib.util.spec_from_file_location(
        'make_model_index',
        REPO_ROOT / 'tools' / 'misc' / 'make_model_index.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def metafile():
    with open(REPO_ROOT / 'configs' / 'metafile.yml') as f:
        return yaml.safe_load(f)


def backbone_of(model):
    """``(type, arch)`` from the entry's get_flops command."""
    match = re.fullmatch(r'python tools/analysis/get_flops\.py --backbone '
                         r'(\w+) --arch (\S+)', model['Metadata']['Complexity'])
    assert match, model['Metadata']['Complexity']
    return match.groups()


def test_index_is_regenerated_after_config_changes():
    tool = index_tool()
    stored = tool.stored_fingerprint()
    assert stored is not None, f'no fingerprint in configs/metafile.yml; ' \
        f'{REGENERATE}'
    assert tool.stored_fingerprint(tool.MODEL_INDEX) == stored
    assert stored == tool.fingerprint(), (
        f'configs (or the generator) changed since the index was written; '
        f'{REGENERATE}')


# The smallest leaf of each kind of config, and the drop-in examples.
SAMPLE = ['retinanet_poolformer_s12_coco', 'mask_rcnn_caformer_s18_coco',
          'semantic_fpn_convmixer_768_32_ade20k',
          'upernet_convformer_s18_drop_in']


def test_sampled_entries_are_what_their_configs_give(metafile):
    tool = index_tool()
    stored = {m['Name']: m for m in metafile['Models']}
    paths = {p.stem: p for p in tool.config_paths()}
    flops = tool.stored_flops()
    _, rebuilt = tool.build_index(
        lambda t, a: flops[tool.arch_key(t, a)],
        configs=[paths[name] for name in SAMPLE])
    for model in rebuilt['Models']:
        assert model == stored[model['Name']], model['Name']


def test_stored_parameters_equal_a_recount(metafile):
    """One figure per backbone, and the smallest of each family recounted
    (the sizes come from the fingerprinted arch table)."""
    tool = index_tool()
    stored = {}
    for model in metafile['Models']:
        stored.setdefault(backbone_of(model), set()).add(
            model['Metadata']['Parameters'])
    assert len(stored) >= 30  # every family and size
    assert all(len(params) == 1 for params in stored.values())
    smallest = {}
    for (backbone_type, arch), (params, ) in sorted(stored.items()):
        if params < smallest.get(backbone_type, (None, float('inf')))[1]:
            smallest[backbone_type] = (arch, params)
    assert len(smallest) == 7  # the six MetaFormer families and ConvMixer
    for backbone_type, (arch, params) in smallest.items():
        assert params == tool.count_params(backbone_type, arch), (
            f'{backbone_type} {arch}: {REGENERATE}')


def test_stored_flops_equal_a_recount(metafile):
    tool = index_tool()
    assert tool.stored_flops()['PoolFormer-S12'] == tool.count_flops(
        'PoolFormer', 's12')


def test_index_covers_every_config_in_openmmlab_format(metafile):
    tool = index_tool()
    models = metafile['Models']
    names = [m['Name'] for m in models]
    assert len(names) == len(set(names))
    configs = {p.relative_to(REPO_ROOT).as_posix()
               for p in tool.config_paths()}
    assert {m['Config'] for m in models} == configs
    collections = {c['Name'] for c in metafile['Collections']}
    for model in models:
        assert model['In Collection'] in collections
        assert (REPO_ROOT / model['Config']).is_file()
        meta = model['Metadata']
        assert isinstance(meta['Parameters'], int) and meta['Parameters'] > 0
        assert isinstance(meta['FLOPs'], int) and meta['FLOPs'] > 0
        assert meta['Training Data'] in ('COCO', 'ADE20K')
        assert meta['Pretrained'].startswith('https://')
        for result in model.get('Results', []):
            assert result['Task'] in ('Object Detection',
                                      'Instance Segmentation',
                                      'Semantic Segmentation')
            assert result['Metrics']
    # Backbone figures at 224x224, as in the README's complexity table
    # (PoolFormer-S12: 11.40 M parameters, 1.83 G MACs), not the detector's.
    s12 = next(m for m in models
               if m['Name'] == 'retinanet_poolformer_s12_coco')['Metadata']
    assert abs(s12['Parameters'] / 11.40e6 - 1) < 0.005
    assert abs(s12['FLOPs'] / 1.834e9 - 1) < 0.005


def test_published_results_and_weights(metafile):
    """Every published trained model is listed with its numbers, and the
    mmseg zoo entries are exactly what mmseg's own metafile says."""
    models = {m['Name']: m for m in metafile['Models']}
    published = {name: m for name, m in models.items() if 'Results' in m}
    assert sorted(published) == sorted(
        [f'retinanet_poolformer_{s}_coco' for s in ('s12', 's24', 's36')] +
        [f'mask_rcnn_poolformer_{s}_coco' for s in ('s12', 's24', 's36')] +
        [f'semantic_fpn_poolformer_{s}_ade20k'
         for s in ('s12', 's24', 's36', 'm36', 'm48')])
    mask_s36 = published['mask_rcnn_poolformer_s36_coco']['Results']
    assert [(r['Task'], r['Metrics']) for r in mask_s36] == [
        ('Object Detection', {'box AP': 41.0}),
        ('Instance Segmentation', {'mask AP': 37.7})]
    assert published['semantic_fpn_poolformer_m48_ade20k']['Results'][0][
        'Metrics'] == {'mIoU': 42.7}

    mmseg = Path(get_installed_path('mmseg')) / '.mim'
    with open(mmseg / 'configs' / 'poolformer' / 'metafile.yaml') as f:
        zoo = {m['Weights']: m for m in yaml.safe_load(f)['Models']}
    for size in ('s12', 's24', 's36', 'm36', 'm48'):
        weights = published[f'semantic_fpn_poolformer_{size}_ade20k'][
            'Published Weights']
        zoo_entry = next(w for w in weights if 'mmseg model zoo' in w['Source'])
        assert zoo_entry['URL'] in zoo, zoo_entry['URL']
        assert zoo_entry['Metrics']['mIoU'] == zoo[zoo_entry['URL']][
            'Results']['Metrics']['mIoU']
        config = zoo_entry['Source'].split('mmseg::')[1].split(')')[0]
        assert (mmseg / 'configs' / config).is_file(), config
