"""Packaging for mmmetaformer.

Installing the package also installs ``configs/``, ``tools/`` and
``model-index.yml`` inside it as ``mmmetaformer/.mim/`` (the layout
OpenMMLab's mim reads: ``mim search mmmetaformer`` finds the model index).

Configs are not resolved as ``mmmetaformer::name.py`` bases: mmengine only
resolves the packages it knows (``mmdet::``, ``mmseg::``, ...). Inherit one
of ours by path instead, relative to your config or absolute into the
installed copy::

    _base_ = ['/path/to/site-packages/mmmetaformer/.mim/configs/'
              'retinanet_poolformer_s12_coco.py']

where ``mmengine.utils.get_installed_path('mmmetaformer')`` gives the
folder above ``.mim``. The base's ``custom_imports`` comes with it, so the
backbones are registered (``tests/test_packaging.py``).

Dependencies are what the package imports; mmdet and mmseg are what you
train with (the ``mim`` extra), and timm is only the tests' reference.
"""

import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """The requirement lines of ``requirements/<name>``: the one list that
    both this file and tools/setup_env.sh install from."""
    with open(osp.join(HERE, 'requirements', name)) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line]


# What the package imports (torch as whatever >= 2.0 is installed).
INSTALL_REQUIRES = read_requirements('runtime.txt')
EXTRAS_REQUIRE = {
    # mmcv with compiled ops, mmdet 3.x and mmseg 1.x, as ranges.
    'mim': read_requirements('mminstall.txt'),
    # timm (the reference every backbone is checked against), pytest, onnx.
    'tests': read_requirements('tests.txt'),
    # an independent PoolFormer v1 reference for the tests
    'optional': read_requirements('optional.txt'),
}
MIM_ITEMS = ('configs', 'tools', 'model-index.yml')


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'mmmetaformer', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def add_mim_extension():
    """Expose configs/, tools/ and model-index.yml under mmmetaformer/.mim.

    Editable installs (``pip install -e .`` runs ``editable_wheel``) get
    symlinks, so edits show up at once; regular installs get copies.
    """
    editable = {'develop', 'editable_wheel'} & set(sys.argv)
    mim_root = osp.join(HERE, 'mmmetaformer', '.mim')
    os.makedirs(mim_root, exist_ok=True)
    for name in MIM_ITEMS:
        src = osp.join(HERE, name)
        dst = osp.join(mim_root, name)
        if not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if editable:
            os.symlink(osp.relpath(src, mim_root), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmmetaformer',
        version=read_version(),
        description='MetaFormer family backbones (PoolFormer, ConvFormer, '
        'CAFormer, ...) for mmdetection and mmsegmentation',
        long_description=open(osp.join(HERE, 'README.md')).read()
        if osp.exists(osp.join(HERE, 'README.md'))
        else '',
        long_description_content_type='text/markdown',
        # the library only: what tools/ and tests/ import beside it
        # (tools/mmmetaformer_tools) ships as mim's tools, not a package
        packages=find_packages(include=('mmmetaformer', 'mmmetaformer.*')),
        include_package_data=True,
        package_data={
            'mmmetaformer': [
                '.mim/configs/**/*',
                '.mim/tools/**/*',
                '.mim/model-index.yml',
            ]
        },
        python_requires='>=3.9',
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        license='Apache License 2.0',
        zip_safe=False,
    )
