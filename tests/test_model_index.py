"""model-index.yml and configs/metafile.yml cannot drift from the configs.

The index is regenerated here from the configs exactly as
``tools/misc/make_model_index.py`` writes it, with each backbone's FLOPs
taken from the stored metafile (counting all of them costs minutes); two
archs' FLOPs are recounted to check those stored figures, and every
backbone's parameters are recounted (on the meta device) by the
regeneration itself.
"""
import difflib
import functools
import importlib.util
from pathlib import Path

import pytest
import yaml
from mmengine.utils import get_installed_path

from tests.helpers import REPO_ROOT


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


def test_index_files_are_what_the_configs_give():
    tool = index_tool()
    stored = tool.stored_flops()

    def flops_of(backbone_type, arch):
        key = tool.arch_key(backbone_type, arch)
        assert key in stored, (f'no FLOPs stored for {key}: run python '
                               'tools/misc/make_model_index.py')
        return stored[key]

    model_index, metafile = tool.build_index(flops_of)
    for path, data in ((tool.MODEL_INDEX, model_index),
                       (tool.METAFILE, metafile)):
        expected = tool.render(data)
        actual = path.read_text()
        if actual != expected:
            diff = ''.join(list(difflib.unified_diff(
                actual.splitlines(True), expected.splitlines(True),
                'committed', 'from the configs'))[:60])
            pytest.fail(f'{path.name} is stale; run python tools/misc/'
                        f'make_model_index.py\n{diff}')


@pytest.mark.parametrize('backbone_type,arch', [('PoolFormer', 's12'),
                                                ('CAFormer', 's18')])
def test_stored_flops_equal_a_recount(metafile, backbone_type, arch):
    tool = index_tool()
    stored = tool.stored_flops()
    assert stored[tool.arch_key(backbone_type, arch)] == tool.count_flops(
        backbone_type, arch)


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
