"""A tool's output is the tool's: no import-time notices of the frameworks
(setuptools' pkg_resources warning that mmengine's import triggers, torch
2.5's TorchScript notice) before its own lines. Checked on the one-line
error of a missing input, which each tool reaches after importing its
frameworks; the tools differ in what they import first."""

import pytest

from .helpers import run_tool

# train.py and test.py: test_foundation.py's missing-config test
MISSING_INPUT = {
    'convert_checkpoint.py': ('nope.pth', 'out.pth'),
    'export_onnx.py': ('nope.py', 'nope.pth', '--out', 'out.onnx'),
    'infer.py': ('nope.jpg', 'nope.py', 'nope.pth'),
}


@pytest.mark.parametrize('tool', sorted(MISSING_INPUT))
def test_a_tool_error_is_its_only_line(tool, tmp_path):
    proc = run_tool(tool, *MISSING_INPUT[tool], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    assert 'nope' in lines[0]
