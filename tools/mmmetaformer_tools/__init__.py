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
