"""Packaging for mmmetaformer.

Installing the package also installs ``configs/`` and ``tools/`` inside it as
``mmmetaformer/.mim/{configs,tools}`` (the layout OpenMMLab's mim uses), so
``mmmetaformer::retinanet_poolformer_s12_coco.py`` resolves as a config base.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'mmmetaformer', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(name):
    with open(osp.join(HERE, 'requirements', name)) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip()]


def add_mim_extension():
    """Expose configs/ and tools/ as package data under mmmetaformer/.mim.

    Editable installs (``pip install -e .`` runs ``editable_wheel``) get
    symlinks, so edits show up at once; regular installs get copies.
    """
    editable = {'develop', 'editable_wheel'} & set(sys.argv)
    mode = 'symlink' if editable else 'copy'
    mim_root = osp.join(HERE, 'mmmetaformer', '.mim')
    os.makedirs(mim_root, exist_ok=True)
    for name in ('configs', 'tools'):
        src = osp.join(HERE, name)
        dst = osp.join(mim_root, name)
        if not osp.isdir(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_root), dst)
        else:
            shutil.copytree(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmmetaformer',
        version=read_version(),
        description='MetaFormer family backbones (PoolFormer, ConvFormer, '
        'CAFormer, ...) for mmdetection and mmsegmentation',
        long_description=open(osp.join(HERE, 'README.md')).read()
        if osp.exists(osp.join(HERE, 'README.md')) else '',
        long_description_content_type='text/markdown',
        packages=find_packages(exclude=('configs', 'tools', 'tests')),
        include_package_data=True,
        package_data={'mmmetaformer': ['.mim/configs/**/*', '.mim/tools/**/*']},
        python_requires='>=3.9',
        install_requires=read_requirements('runtime.txt'),
        extras_require={
            'mim': read_requirements('mminstall.txt'),
            'tests': read_requirements('tests.txt'),
            'optional': read_requirements('optional.txt'),
        },
        license='Apache License 2.0',
        zip_safe=False,
    )
