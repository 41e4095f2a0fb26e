"""The backbones under torch.compile, forward hooks and autocast.

* compile: every family traces with zero graph breaks in train mode (with
  autograd) and in eval mode under ``no_grad`` and ``inference_mode``;
  a ``fullgraph=True`` compile (AOTAutograd, functionalised) equals eager,
  forward and backward;
* hooks: no tensor a submodule returned is modified afterwards, so a
  forward hook on any module sees the values the model really used;
* AMP: a bf16 and an fp16 autocast training step on CPU is finite and
  close to fp32; StarReLU holds large fp16 inputs; ``CPUAmpOptimWrapper``
  (what ``tools/train.py --amp`` uses without a GPU) trains under autocast.

The properties do not depend on size, so the archs are tiny (one block per
stage, narrow) and the inputs small. ``no_grad`` and ``inference_mode`` run
the same code (``torch.is_grad_enabled()`` is False in both), so every
family is checked in train and ``no_grad`` modes and one in
``inference_mode``. fp16 convolutions have only slow reference kernels on
CPUs without fp16 arithmetic, so the fp16 step is checked on the families
whose layers are cheap in it (all pass in fp16; see the test).
"""

import pytest
import torch
import torch.nn.functional as F

import mmmetaformer  # noqa: F401
from mmmetaformer.models.core.layers import StarReLU
from mmmetaformer.registry import MODELS

from .tolerance import assert_close, assert_gradients_close, model_rounding

TINY = dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 64])
# one tiny arch per family (ConvMixer with ReLU, as 768/32). The generic
# ``MetaFormer`` builds the same layers from an arch dict: it has no code of
# its own to check.
TINY_MODELS = dict(
    PoolFormer=dict(arch=TINY),
    PoolFormerV2=dict(arch=TINY),
    IdentityFormer=dict(arch=TINY),
    RandFormer=dict(arch=TINY),
    ConvFormer=dict(arch=TINY),
    CAFormer=dict(arch=TINY),
    ConvMixer=dict(
        arch=dict(
            dim=32,
            depth=4,
            kernel_size=5,
            patch_size=7,
            act_cfg=dict(type='ReLU'),
        ),
        adapter_norm_cfg=dict(type='GN', num_groups=4),
    ),
)
FAMILIES = list(TINY_MODELS)


def build(name, **kwargs):
    torch.manual_seed(0)
    cfg = dict(type=name, **TINY_MODELS[name], **kwargs)
    if name != 'ConvMixer' and 'drop_path_rate' not in kwargs:
        cfg['drop_path_rate'] = 0.0
    return MODELS.build(cfg)


def randomise(model, scale=0.02):
    """Perturb every parameter so layer scales, norms and biases matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors(item)]
    return []


def loss_of(outputs):
    return sum(out.float().square().mean() for out in outputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- torch.compile -------------------------------------------------------

MODES = ('train', 'no_grad', 'inference_mode')
# every family in train and no_grad mode; one in inference_mode
FAMILY_MODES = [
    (name, mode) for name in FAMILIES for mode in ('train', 'no_grad')
] + [('CAFormer', 'inference_mode')]


def run_in_mode(fn, model, x, mode):
    if mode == 'train':
        model.train()
        return fn(x)
    model.eval()
    context = torch.no_grad if mode == 'no_grad' else torch.inference_mode
    with context():
        return fn(x)


@pytest.mark.parametrize('name, mode', FAMILY_MODES)
def test_no_graph_breaks(name, mode):
    # drop path on, so training traces stochastic depth too
    kwargs = {} if name == 'ConvMixer' else dict(drop_path_rate=0.1)
    model = build(name, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    explanation = run_in_mode(torch._dynamo.explain(model), model, x, mode)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_randformer_trained_grid_has_no_graph_breaks():
    """224x224 gives the 14x14 and 7x7 grids: the matrix as trained."""
    model = build('RandFormer')
    x = torch.randn(1, 3, 224, 224)
    explanation = run_in_mode(torch._dynamo.explain(model), model, x, 'train')
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_fullgraph_compile_equals_eager():
    """CAFormer (StarReLU's autograd function, separable convs, attention,
    channels-last MLPs): forward and gradients in training, forward in eval.

    ``aot_eager`` runs AOTAutograd's functionalised forward and backward
    graphs, what inductor would compile, without the C++ build time.
    """
    model = randomise(build('CAFormer'))
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        outs = fn(x)
        loss_of(outs).backward()
        results.append(
            (
                [o.detach() for o in outs],
                {n: p.grad.clone() for n, p in model.named_parameters()},
            )
        )
    (eager_outs, eager_grads), (outs, grads) = results
    rounding = model_rounding(model)
    for a, b in zip(outs, eager_outs):
        assert_close(a, b, *rounding)
    assert_gradients_close(grads, eager_grads, *rounding)
    model.eval()
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x)):
            assert_close(a, b, *rounding)


# --- forward hooks -------------------------------------------------------


@pytest.mark.parametrize('name, mode', FAMILY_MODES)
def test_hooks_see_final_values(name, mode):
    """A clone taken in each module's forward hook equals the tensor after
    the whole forward: nothing a module returned is overwritten later."""
    model = randomise(build(name))
    records = []

    def hook(module_name, module, args, output):
        for i, t in enumerate(tensors(output)):
            records.append(
                (f'{module_name or "model"}[{i}]', t, t.detach().clone())
            )

    handles = [
        module.register_forward_hook(
            lambda m, a, o, n=module_name: hook(n, m, a, o)
        )
        for module_name, module in model.named_modules()
    ]
    # an odd size, so RandFormer resamples and ConvMixer pools unevenly
    x = torch.randn(2, 3, 72, 88)
    before = x.clone()
    try:
        outs = run_in_mode(model, model, x, mode)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(x, before)
    names = {n.rsplit('[', 1)[0] for n, _, _ in records}
    assert 'model' in names and len(names) > 10
    changed = [
        n for n, t, saved in records if not torch.equal(t.detach(), saved)
    ]
    assert not changed, f'overwritten after their module returned: {changed}'
    assert len(outs) == 4


# --- autocast ------------------------------------------------------------


def training_step(model, x, dtype=None):
    """One SGD step; returns (loss, {name: grad}) and checks the update."""
    model.train()
    model.zero_grad()
    with torch.autocast(
        'cpu', dtype=dtype or torch.float32, enabled=dtype is not None
    ):
        loss = loss_of(model(x))
    loss.backward()
    grads = {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(1e-3 * p.grad)
    return loss.detach(), grads


AMP_CASES = [(name, torch.bfloat16) for name in FAMILIES] + [
    (name, torch.float16)
    for name in ('PoolFormerV2', 'RandFormer', 'ConvMixer')
]


@pytest.mark.parametrize(
    'name, dtype', AMP_CASES, ids=[f'{n}-{str(d)[6:]}' for n, d in AMP_CASES]
)
def test_autocast_training_step_is_finite_and_close_to_fp32(name, dtype):
    """On CPU in torch 2.5 every op these models use has fp16 and bf16
    autocast kernels (convs, linears, attention in low precision; norms
    in fp32). ConvFormer, CAFormer and the rest pass in fp16 too; they are
    left out of the default suite for time only."""
    model = randomise(build(name))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    loss32, grads32 = training_step(model, x)
    model.load_state_dict(state)
    loss, grads = training_step(model, x, dtype)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert grads.keys() == grads32.keys()
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01
    assert abs(loss - loss32) <= tolerance * abs(loss32), (loss, loss32)
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert F.cosine_similarity(flat, flat32, dim=0) > 0.99


def test_starrelu_holds_large_fp16_inputs():
    """``relu(x) ** 2`` overflows fp16 above 256; the result fits."""
    star = StarReLU(scale_value=0.5, bias_value=-1.0)
    x = torch.tensor([-3.0, 0.5, 200.0, 256.0, 300.0, 360.0])
    expected = 0.5 * x.clamp(min=0) ** 2 - 1.0  # up to 64799 < 65504
    half = x.half()
    # the plain expression in fp16 overflows: what this test guards against
    assert torch.isinf(half.clamp(min=0) ** 2).any()
    with torch.no_grad():
        out = star(half)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=1e-3, atol=1e-3)
    # training path, forward and backward
    leaf = half.clone().requires_grad_()
    out = star(leaf)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(leaf.grad).all()
    assert torch.isfinite(star.scale.grad).all()
    torch.testing.assert_close(
        star.scale.grad, (x.clamp(min=0) ** 2).sum().view(1)
    )
    # inside an fp16 autocast MLP: fc1 gives large values
    fc1 = torch.nn.Linear(2, 4)
    with torch.no_grad():
        fc1.weight.fill_(150.0)
        fc1.bias.zero_()
    with torch.autocast('cpu', dtype=torch.float16):
        hidden = star(fc1(torch.ones(1, 2)))  # relu(300)
    assert hidden.dtype == torch.float16
    assert torch.isfinite(hidden).all()
    torch.testing.assert_close(
        hidden.float(), torch.full((1, 4), 44999.0), rtol=1e-3, atol=0
    )


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_cpu_amp_optim_wrapper_trains_under_autocast(dtype):
    """What ``tools/train.py --amp`` builds on CPU (mmengine's
    ``AmpOptimWrapper`` asserts a GPU): autocast in ``optim_context``,
    dynamic loss scaling for fp16 only, and a checkpointable state."""
    from mmengine.registry import OPTIM_WRAPPERS

    from mmmetaformer.engine.amp import amp_optim_wrapper_type

    if not torch.cuda.is_available():
        assert amp_optim_wrapper_type() == 'CPUAmpOptimWrapper'
    model = randomise(build('PoolFormerV2'))
    wrapper = OPTIM_WRAPPERS.build(
        dict(
            type='CPUAmpOptimWrapper',
            dtype=dtype,
            loss_scale='dynamic',
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        )
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with wrapper.optim_context(model):
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == getattr(torch, dtype)
        loss = loss_of(model(torch.randn(2, 3, 64, 64)))
    assert not torch.is_autocast_enabled('cpu')
    wrapper.update_params(loss)
    changed = [
        n for n, p in model.named_parameters() if not torch.equal(p, before[n])
    ]
    assert torch.isfinite(loss)
    state = wrapper.state_dict()
    if dtype == 'float16':
        # a first fp16 step at scale 2**16 may overflow and be skipped (the
        # scale then halves); a second one at most halves it again
        assert state['loss_scaler']['scale'] <= 2.0**16
    else:
        assert state['loss_scaler'] == {}  # bf16: no scaling
        assert changed
    wrapper.load_state_dict(state)
    with pytest.raises(ValueError, match="'float64'.*bfloat16"):
        OPTIM_WRAPPERS.build(
            dict(
                type='CPUAmpOptimWrapper',
                dtype='float64',
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            )
        )


def test_compile_config_trains_through_the_train_tool(tmp_path):
    """mmengine's ``compile`` key (``torch.compile`` of ``train_step``)
    trains through ``tools/train.py``: the tool adds
    ``EagerOptimizerStepHook``, so dynamo does not trace the optimizer
    step, which it cannot (one failing iteration before)."""
    from mmmetaformer_tools.toy import make_coco

    from .helpers import run_tool, tiny_config

    make_coco(
        tmp_path / 'data' / 'toy_coco', num_train=2, num_val=1, img_size=64
    )
    proc = run_tool(
        'train.py',
        tiny_config(tmp_path, 'retinanet'),  # compile time grows with depth
        '--work-dir',
        tmp_path / 'work',
        '--cfg-options',
        'compile.backend=eager',
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=2',
        'train_dataloader.batch_size=2',
        'default_hooks.checkpoint.save_last=False',  # the steps are checked
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'Epoch(train) [1][1/1]' in log
