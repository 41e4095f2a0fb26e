"""What only the tools, the demo and the tests use: kept beside the library.

``tools/*.py`` put ``tools/`` on ``sys.path`` and import this package;
the tests do the same (``tests/conftest.py``). ``pip install`` ships it
only as part of ``mmmetaformer/.mim/tools/``, the tools mim runs, never as
an importable package: ``import mmmetaformer`` never imports it.

* ``launch``: the tools' config loading, checks and one-line errors;
* ``result_files``: ``test.py``'s ``--out`` and ``--show-dir`` files,
  written through ``atomic_output``;
* ``measure``, ``backbone_runners``, ``backbone_benchmark``: the
  benchmarks; ``complexity``: MAC counting (``get_flops.py``, the model
  index); ``env_check``: the environment check;
* ``toy``: the synthetic COCO and ADE20K sets of the demo and the tests.
"""

import warnings

# mmengine 0.10.7 imports setuptools' pkg_resources, which setuptools >=
# 80.9 answers with a UserWarning on every import (four of them): nothing
# for a tool's user to act on, and it would open every tool's output. The
# tools import this package before any framework (pyproject.toml's isort
# sections), so the filter is in place first.
warnings.filterwarnings(
    'ignore', message='pkg_resources is deprecated', category=UserWarning
)
