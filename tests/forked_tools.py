"""Run ``tools/*.py`` in processes forked from one that imported the stack.

Importing torch, mmengine, mmdet and mmseg costs about 8 s of CPU per
process on the project's machine. Tests that run a tool many times fork
each run from a forkserver that imported them once (the standard
``multiprocessing`` 'forkserver' start method). A forked run is its own
process that executes the script as ``__main__`` (``runpy``), exactly as
``python tools/X.py ARGS`` would after its imports: it has its own exit
status and output, and it can be SIGKILLed.
"""

import multiprocessing
import os
import runpy
import sys
from types import SimpleNamespace

from .helpers import REPO_ROOT

# Not mmmetaformer: each run imports it as a fresh process would (through
# the tool or the config's custom_imports), which is what installs the safe
# checkpoint loaders; after these modules that takes 0.05 s.
PRELOAD = [
    'torch',
    'mmengine.runner',
    'mmdet.apis',
    'mmdet.datasets',
    'mmdet.evaluation',
    'mmdet.models',
    'mmseg.apis',
    'mmseg.datasets',
    'mmseg.evaluation',
    'mmseg.models',
]


def _context():
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(PRELOAD)
    return context


def _run_script(script, argv, cwd, log_path):
    """In the forked process: the script as ``__main__``, output to a file."""
    import torch

    torch.set_num_threads(1)  # reproducible, and fair to a shared machine
    os.chdir(cwd)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name='__main__')


class ForkedTool:
    """``tools/<script> args`` running in a forked process."""

    def __init__(self, script, *args, cwd, log_path):
        self.log_path = str(log_path)
        self.process = _context().Process(
            target=_run_script,
            args=(
                str(REPO_ROOT / 'tools' / script),
                [str(a) for a in args],
                str(cwd),
                self.log_path,
            ),
        )
        self.process.start()

    def running(self):
        return self.process.is_alive()

    def kill(self):
        self.process.kill()  # SIGKILL
        self.process.join()

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def wait(self, timeout=900):
        """``returncode`` and ``output`` (stdout and stderr together)."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            raise TimeoutError(
                f'{self.log_path}: still running after {timeout} s'
            )
        return SimpleNamespace(
            returncode=self.process.exitcode, output=self.output()
        )


def run_forked(script, *args, cwd, log_path, timeout=900):
    return ForkedTool(script, *args, cwd=cwd, log_path=log_path).wait(timeout)
