"""The hand-kept model index agrees with the configs and the backbones.

``tools/misc/make_model_index.py`` is the validator; these tests run it on
this repository and show that it catches each kind of drift on a temporary
copy of the index and configs.
"""

import shutil
from pathlib import Path

import pytest
import yaml
from mmengine.utils import get_installed_path

from tests.helpers import REPO_ROOT, load_tool


def index_tool():
    return load_tool('misc/make_model_index.py')


@pytest.fixture(scope='module')
def tool():
    return index_tool()


@pytest.fixture(scope='module')
def metafile():
    with open(REPO_ROOT / 'configs' / 'metafile.yml') as f:
        return yaml.safe_load(f)


@pytest.fixture
def copy(tmp_path):
    """The index, the configs and get_flops.py in a temporary tree."""
    for name in ('model-index.yml',):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / 'configs', tmp_path / 'configs')
    (tmp_path / 'tools' / 'analysis').mkdir(parents=True)
    shutil.copy(
        REPO_ROOT / 'tools' / 'analysis' / 'get_flops.py',
        tmp_path / 'tools' / 'analysis' / 'get_flops.py',
    )
    return tmp_path


def test_index_lists_every_config_and_parameters_agree(tool):
    """Every config listed, every entry's config present, and every stored
    parameter count what get_flops.py's backbone has (meta device)."""
    assert tool.validate(flops=False) == []


def test_flops_of_one_backbone_per_family_agree(tool, metafile):
    smallest = {}
    for model in metafile['Models']:
        backbone_type, arch = tool.backbone_of(model)
        params = model['Metadata']['Parameters']
        if params < smallest.get(backbone_type, ('', float('inf')))[1]:
            smallest[backbone_type] = (arch, params)
    assert len(smallest) == 7  # the six MetaFormer families and ConvMixer
    # FLOPs are counted by tracing at 224x224: the two cheapest families
    # here, the rest through the parameter check above.
    only = {
        ('PoolFormer', smallest['PoolFormer'][0]),
        ('CAFormer', smallest['CAFormer'][0]),
    }
    assert tool.validate(flops=True, only=only) == []


def test_sampled_entries_name_their_configs_backbone(tool):
    names = {
        'retinanet_poolformer_s12_coco',
        'mask_rcnn_caformer_s18_coco',
        'semantic_fpn_convmixer_768_32_ade20k',
        'upernet_convformer_s18_drop_in',
    }
    assert tool.validate(flops=False, only=set(), config_names=names) == []


def test_a_config_starting_from_other_weights_fails(tool, copy):
    """A config naming the authors' URL (the same weights, but not the
    entry's Pretrained Hub id) or another Hub id is a problem."""
    path = copy / 'configs' / 'retinanet_poolformer_s12_coco.py'
    text = path.read_text()
    hub_id = 'hf-hub:timm/poolformer_s12.sail_in1k'
    url = (
        'https://github.com/sail-sg/poolformer/releases/download/v1.0/'
        'poolformer_s12.pth.tar'
    )
    assert f"checkpoint_file = '{hub_id}'" in text
    names = {'retinanet_poolformer_s12_coco'}
    assert (
        tool.validate(copy, flops=False, only=set(), config_names=names) == []
    )
    for other in (url, 'hf-hub:timm/poolformer_s24.sail_in1k'):
        path.write_text(text.replace(hub_id, other))
        assert tool.validate(
            copy, flops=False, only=set(), config_names=names
        ) == [
            'retinanet_poolformer_s12_coco: configs/retinanet_poolformer_s12'
            f"_coco.py starts from {other}, the entry's Pretrained Hub is "
            f'{hub_id}'
        ]


def test_a_config_missing_from_the_metafile_fails(tool, copy):
    path = copy / 'configs' / 'metafile.yml'
    data = yaml.safe_load(path.read_text())
    data['Models'] = [
        m
        for m in data['Models']
        if m['Name'] != 'retinanet_poolformer_s24_coco'
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert tool.validate(copy, flops=False) == [
        'configs/retinanet_poolformer_s24_coco.py: not listed in the metafile'
    ]
    assert tool.main(['--root', str(copy), '--no-flops']) == 1


def test_an_entry_without_its_config_fails(tool, copy):
    (copy / 'configs' / 'retinanet_poolformer_s24_coco.py').unlink()
    assert tool.validate(copy, flops=False) == [
        'retinanet_poolformer_s24_coco: its config '
        'configs/retinanet_poolformer_s24_coco.py does not exist'
    ]


def test_wrong_figures_fail(tool, copy):
    path = copy / 'configs' / 'metafile.yml'
    data = yaml.safe_load(path.read_text())
    entry = next(
        m
        for m in data['Models']
        if m['Name'] == 'retinanet_poolformer_s12_coco'
    )
    right = entry['Metadata']['Parameters']
    entry['Metadata']['Parameters'] = right + 1
    entry['Metadata']['FLOPs'] += 1000
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    problems = tool.validate(copy, flops=True, only={('PoolFormer', 's12')})
    assert problems == [
        f'retinanet_poolformer_s12_coco: Parameters {right + 1} but '
        f'get_flops.py --backbone PoolFormer --arch s12 counts {right}',
        f'retinanet_poolformer_s12_coco: FLOPs {entry["Metadata"]["FLOPs"]} '
        'but get_flops.py --backbone PoolFormer --arch s12 counts '
        f'{entry["Metadata"]["FLOPs"] - 1000}',
    ]


def test_index_in_openmmlab_format(metafile):
    models = metafile['Models']
    collections = {c['Name'] for c in metafile['Collections']}
    assert collections == {
        'PoolFormer',
        'PoolFormerV2',
        'IdentityFormer',
        'RandFormer',
        'ConvFormer',
        'CAFormer',
        'ConvMixer',
    }
    for model in models:
        meta = model['Metadata']
        assert meta['Training Data'] in ('COCO', 'ADE20K')
        assert meta['Pretrained'].startswith('https://')
        for result in model.get('Results', []):
            assert result['Task'] in (
                'Object Detection',
                'Instance Segmentation',
                'Semantic Segmentation',
            )
            assert result['Metrics']
    # Backbone figures at 224x224 (PoolFormer-S12: 11.40 M parameters,
    # 1.83 G MACs in the papers' counting), not the detector's.
    s12 = next(
        m for m in models if m['Name'] == 'retinanet_poolformer_s12_coco'
    )['Metadata']
    assert abs(s12['Parameters'] / 11.40e6 - 1) < 0.005
    assert abs(s12['FLOPs'] / 1.834e9 - 1) < 0.005


def test_published_results_and_weights(metafile):
    """Every published trained model is listed with its numbers; Weights
    are direct files, and the mmseg zoo's are what mmseg's metafile says."""
    models = {m['Name']: m for m in metafile['Models']}
    published = {name: m for name, m in models.items() if 'Results' in m}
    assert sorted(published) == sorted(
        [f'retinanet_poolformer_{s}_coco' for s in ('s12', 's24', 's36')]
        + [f'mask_rcnn_poolformer_{s}_coco' for s in ('s12', 's24', 's36')]
        + [
            f'semantic_fpn_poolformer_{s}_ade20k'
            for s in ('s12', 's24', 's36', 'm36', 'm48')
        ]
    )
    mask_s36 = published['mask_rcnn_poolformer_s36_coco']['Results']
    assert [(r['Task'], r['Metrics']) for r in mask_s36] == [
        ('Object Detection', {'box AP': 41.0}),
        ('Instance Segmentation', {'mask AP': 37.7}),
    ]
    with_weights = {n for n, m in models.items() if 'Weights' in m}
    assert with_weights == {
        f'semantic_fpn_poolformer_{s}_ade20k'
        for s in ('s12', 's24', 's36', 'm36', 'm48')
    }

    mmseg = Path(get_installed_path('mmseg')) / '.mim'
    with open(mmseg / 'configs' / 'poolformer' / 'metafile.yaml') as f:
        zoo = {m['Weights']: m for m in yaml.safe_load(f)['Models']}
    for name in with_weights:
        weights = models[name]['Weights']
        assert weights in zoo, weights
        listed = next(
            w for w in models[name]['Published Weights'] if w['URL'] == weights
        )
        assert (
            listed['Metrics']['mIoU']
            == zoo[weights]['Results']['Metrics']['mIoU']
        )
