"""Run an exported file in onnxruntime where the PyTorch model ran.

``OnnxModel(path)`` reads the file and its metadata (task, dataset meta,
score threshold; see ``exporter``). Its ``test_step`` replaces the mmdet /
mmseg model's ``test_step`` inside their inferencers, so ``tools/infer.py``
draws and saves through the same code for either backend: detections are
rescaled to the original image (boxes divided by ``scale_factor``; mask
probabilities, pasted at the network's input size, resized bilinearly and
binarised at the file's ``mask_thr``), segmentation logits go through the
model's own ``postprocess_result``.
"""

import json

import numpy as np
import torch
import torch.nn.functional as F


class ExportedFileError(ValueError):
    """The file is no model exported for this config's task (one line)."""


class OnnxModel:
    """An exported file in an onnxruntime CPU (or CUDA) session."""

    def __init__(self, path, threads=None, device='cpu'):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ['CPUExecutionProvider']
        if (
            str(device).startswith('cuda')
            and 'CUDAExecutionProvider' in ort.get_available_providers()
        ):
            providers.insert(0, 'CUDAExecutionProvider')
        self.session = ort.InferenceSession(
            str(path), options, providers=providers
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.task = meta.get('mmmetaformer.task')
        self.dataset_meta = json.loads(
            meta.get('mmmetaformer.dataset_meta', '{}')
        )
        self.score_thr = float(meta.get('mmmetaformer.score_thr', 0))
        self.mask_thr = float(meta.get('mmmetaformer.mask_thr', 0.5))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.postprocess = None  # segmentation: the model's

    def __call__(self, image):
        """``image [N, 3, H, W]`` (any real dtype, 0-255) -> numpy outputs."""
        if torch.is_tensor(image):
            image = image.detach().cpu().float().numpy()
        return self.session.run(None, {'image': image.astype(np.float32)})

    def test_step(self, data):
        """The mmdet / mmseg ``test_step`` contract: ``data`` holds
        ``inputs`` (``[3, H, W]`` tensors as packed) and ``data_samples``;
        returns the samples with their predictions."""
        samples = []
        for image, sample in zip(data['inputs'], data['data_samples']):
            outputs = self(image[None])
            if self.task == 'segmentation':
                samples += self.postprocess(
                    torch.from_numpy(outputs[0]), [sample]
                )
            else:
                samples.append(self._detections(outputs, sample))
        return samples

    def _detections(self, outputs, sample):
        from mmengine.structures import InstanceData

        boxes, scores, labels = (torch.from_numpy(o[0]) for o in outputs[:3])
        keep = scores > 0
        scale = boxes.new_tensor(
            sample.metainfo.get('scale_factor', (1.0, 1.0))
        )
        pred = InstanceData(
            bboxes=boxes[keep] / scale.repeat(2),
            scores=scores[keep],
            labels=labels[keep],
        )
        if len(outputs) > 3:
            # probabilities at the input size: resized to the original
            # image, then binarised (mmdet pastes at the original size)
            masks = torch.from_numpy(outputs[3][0])[keep]
            height, width = sample.metainfo['ori_shape'][:2]
            if masks.shape[-2:] != (height, width) and len(masks):
                masks = F.interpolate(
                    masks[None],
                    size=(height, width),
                    mode='bilinear',
                    align_corners=False,
                )[0]
            pred.masks = masks >= self.mask_thr
        sample.pred_instances = pred
        return sample


def fixed_palette(num_classes):
    """One colour per class for a segmentor whose meta names its classes
    but no palette (mmseg's visualizer needs one per class), the same on
    every run: ``[[r, g, b], ...]``."""
    return np.random.RandomState(0).randint(0, 256, (num_classes, 3)).tolist()


def attach(inferencer, onnx_model):
    """Make an mmdet / mmseg inferencer (built from the config, no weights)
    predict with ``onnx_model``: its classes and palette, its outputs."""
    model = inferencer.model
    meta = onnx_model.dataset_meta
    if meta.get('classes'):
        # the file's classes; the palette from the config where the file
        # has none (as the inferencers do with a checkpoint's meta)
        model.dataset_meta = dict(model.dataset_meta or {}, **meta)
        if onnx_model.task == 'segmentation':
            if 'palette' not in meta:
                model.dataset_meta['palette'] = fixed_palette(
                    len(meta['classes'])
                )
        else:
            inferencer.visualizer.dataset_meta = model.dataset_meta
    bind(model, onnx_model)
    return inferencer


def bind(model, onnx_model):
    """Make ``model.test_step`` run ``onnx_model`` (a segmentor keeps its
    own ``postprocess_result``: crop, resize to the original, argmax)."""
    if onnx_model.task == 'segmentation':
        onnx_model.postprocess = model.postprocess_result
    model.test_step = onnx_model.test_step
    return model


def open_exported(path, scope, device='cpu'):
    """``OnnxModel`` of ``path``, refused in one line unless it holds a
    model of the config's task (``scope``: 'mmdet' or 'mmseg')."""
    onnx_model = OnnxModel(path, device=device)
    expected = 'detection' if scope == 'mmdet' else 'segmentation'
    if onnx_model.task != expected:
        raise ExportedFileError(
            f'{path} holds a {onnx_model.task or "non-exported"} model (no '
            f'mmmetaformer metadata), the config a {expected} model; export '
            'it with tools/export_onnx.py from this config'
        )
    return onnx_model
