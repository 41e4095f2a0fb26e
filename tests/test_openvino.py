"""The exported files run in OpenVINO's CPU runtime, the edge deployment,
without any plugin, and give onnxruntime's outputs: checked by
``tools/analysis/compare_runtimes.py`` (the exporter's tolerances) on the
toy Mask R-CNN (NMS, RoiAlign and masks in the graph) and the toy UperNet
(the exact adaptive pool; 64x160 has a 2x5 stage-4 map, which bins 3 and 6
do not divide), each at two sizes other than the export size."""

import re

import pytest

from .helpers import load_tool
from .test_export import export_case


def compare_runtimes():
    return load_tool('analysis/compare_runtimes.py')


@pytest.mark.parametrize(
    'name, shapes',
    [
        ('mask_rcnn_poolformer', [(72, 88), (59, 91)]),
        ('upernet_caformer', [(64, 160), (112, 80)]),
    ],
)
def test_openvino_gives_onnxruntimes_outputs(name, shapes, tmp_path, capsys):
    onnx_file, _ = export_case(name, tmp_path, verify=False)
    argv = [str(onnx_file)]
    for shape in shapes:
        argv += ['--shape', *map(str, shape)]
    status = compare_runtimes().main(argv)
    out = capsys.readouterr().out
    assert status == 0, out
    lines = [line for line in out.splitlines() if line.startswith('  ')]
    assert len(lines) == 2 and all(': ok: ' in line for line in lines), out
    if name.startswith('mask'):
        # something was compared, masks included
        for line in lines:
            matched = re.search(r'(\d+)/(\d+) of the top', line)
            assert matched and int(matched[1]) > 0, line
            assert 'mask IoU' in line, line
