"""Verify the environment: every stack package imports and mmcv has its ops.

Usage: python tools/check_env.py [--quiet]
Exits 1 with the reason and the fix when something is missing.
"""

import argparse
import importlib.util
import os.path as osp
import sys


def load_env_check():
    path = osp.join(
        osp.dirname(osp.abspath(__file__)),
        'mmmetaformer_tools',
        'env_check.py',
    )
    spec = importlib.util.spec_from_file_location(
        '_mmmetaformer_env_check', path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args()
    env_check = load_env_check()
    try:
        versions = env_check.stack_versions()
        env_check.check_mmcv_ops()
    except (ImportError, env_check.MMCVOpsMissingError) as exc:
        print(f'[check_env] FAILED: {exc}', file=sys.stderr)
        return 1
    if not args.quiet:
        print(
            '[check_env] ' + ', '.join(f'{k} {v}' for k, v in versions.items())
        )
        print(
            '[check_env] mmcv compiled ops (nms, batched_nms, RoIAlign) '
            'work on CPU'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
