"""The safe reader's work is bounded by the file it reads.

A crafted file (a zip bomb, a flood of opcodes for torch's pure-Python
``weights_only`` unpickler, a far memo slot, a legacy-format flood) is
refused before anything is decompressed or unpickled, in one line that names
the member and the figures; its time and peak Python memory are measured
here. Legitimate files at the edge of the limits still read: re-zipped
(deflated) checkpoints, a Runner checkpoint with a per-parameter optimizer
of a large model's tensor count, the legacy format, and a pickle holding
exactly its opcode budget. ``tools/analysis/reader_bounds.py`` measures the
same kinds up to 10 MB in fresh processes (docs/benchmarks.md).
"""

import io
import random
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmmetaformer.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    reader,
)
from mmmetaformer.checkpoint.reader import torch_load_safely

from .helpers import load_tool

crafted = load_tool('analysis/reader_bounds.py')

BUDGET = reader.PICKLE_OPS_BASE  # opcodes of a pickle with no records
FLOOD_SIZE = 300_000  # bytes: three times the base budget of 1-byte ops


def read_once(data, name):
    try:
        torch_load_safely(io.BytesIO(data), name)
        return 'loaded'
    except CheckpointError as exc:
        return exc


def traced_peak(data, name):
    """(outcome, peak bytes of Python allocations) of reading ``data``;
    tracemalloc slows the reader several times."""
    tracemalloc.start()
    try:
        outcome = read_once(data, name)
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def read_measured(data, name='crafted.pth'):
    """(outcome, seconds, peak bytes) of reading ``data``: the seconds of a
    plain read, the peak of Python allocations of a second one."""
    start = time.perf_counter()
    outcome = read_once(data, name)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        read_once(data, name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, seconds, peak


def rezipped(data, level=9):
    """``data`` (a torch.save zip) with every member deflated."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(
            buffer, 'w', zipfile.ZIP_DEFLATED, compresslevel=level
        ) as out,
    ):
        for info in source.infolist():
            out.writestr(info.filename, source.read(info))
    return buffer.getvalue()


def saved(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def runner_checkpoint(num_params):
    """A Runner checkpoint's layout at a large model's tensor count, with
    small tensors (the budget counts records, not bytes): state_dict,
    AdamW state with one param group per parameter (layer decay), and
    message_hub histories and dataset_meta as mmengine saves them."""
    params = [
        torch.nn.Parameter(torch.randn(3, 2, 1, 1)) for _ in range(num_params)
    ]
    optimizer = torch.optim.AdamW(
        [
            {'params': [p], 'lr': 1e-3 * 0.9**i, 'weight_decay': 0.05}
            for i, p in enumerate(params)
        ]
    )
    sum((p * p).sum() for p in params).backward()
    optimizer.step()
    history = HistoryBuffer()
    for value in np.linspace(0, 1, 500):
        history.update(float(value))
    return {
        'meta': {
            'epoch': 12,
            'iter': 5000,
            'seed': np.int64(0),
            'cfg': 'model = dict(type="CascadeRCNN")\n' * 300,
            'dataset_meta': {
                'classes': tuple(f'class {i}' for i in range(1203)),
                'palette': [(i % 256, i // 256, 7) for i in range(1203)],
            },
        },
        'state_dict': {
            f'backbone.layer{i}.weight': p.detach()
            for i, p in enumerate(params)
        },
        'optimizer': optimizer.state_dict(),
        'message_hub': {
            'log_scalars': {f'train/loss_{i}': history for i in range(20)}
        },
    }


def test_torch_save_stores_every_member_uncompressed():
    """The premise of the expansion rule, on the torch running here."""
    data = saved({'w': torch.zeros(1000), 'meta': {'text': 'a' * 10000}})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            assert info.file_size == info.compress_size


@pytest.mark.parametrize(
    'kind', ['pickle zip bomb (x1000)', 'record zip bomb (x1000)']
)
def test_zip_bombs_are_refused_before_expansion(kind):
    data = crafted.KINDS[kind](64_000)  # ~64 MB once expanded
    outcome, seconds, peak = read_measured(data, 'bomb.pth')
    assert isinstance(outcome, UnsafeCheckpointError), outcome
    message = str(outcome)
    assert '\n' not in message and message.startswith('bomb.pth was refused')
    assert 'expand' in message and 'torch.save' in message
    if kind.startswith('pickle'):
        assert "'archive/data.pkl' expands to 64000008 bytes" in message
    # nothing was expanded: the reader held the file and little else
    assert peak < 2 * len(data) + 2**20, peak
    assert seconds < 1.0


def test_rezipped_checkpoints_load():
    """Deflated members (``zip -r`` of a checkpoint) are read, including a
    small constant tensor that deflates several hundred times."""
    checkpoint = {
        'state_dict': {
            'layer_scale': torch.full((768,), 1e-5),
            'num_batches_tracked': torch.tensor(7),
            'weight': torch.randn(64, 32),
        },
        'meta': {'cfg': 'x = 1\n' * 2000},
    }
    data = rezipped(saved(checkpoint))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        ratios = [
            info.file_size / info.compress_size
            for info in archive.infolist()
            if info.compress_size
        ]
    assert max(ratios) > reader.ZIP_EXPANSION_LIMIT  # the constant tensor
    loaded = torch_load_safely(io.BytesIO(data), 'rezipped.pth')
    for key, value in checkpoint['state_dict'].items():
        assert torch.equal(loaded['state_dict'][key], value), key
    assert loaded['meta'] == checkpoint['meta']


def test_large_runner_checkpoint_loads_zip_legacy_and_rezipped():
    """600 parameters (ConvFormer-B36 has 458, a detector around it more)
    with an AdamW state and a param group each: 2400 records; a smaller
    one in the legacy format and re-zipped."""
    data = saved(runner_checkpoint(600))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = sum('/data/' in name for name in archive.namelist())
    assert records == 600 * 4  # weight, exp_avg, exp_avg_sq, step
    small = runner_checkpoint(100)
    for label, blob in (
        ('zip', data),
        ('rezipped', rezipped(saved(small))),
        ('legacy', saved(small, _use_new_zipfile_serialization=False)),
    ):
        loaded = torch_load_safely(io.BytesIO(blob), f'{label}.pth')
        assert len(loaded['optimizer']['param_groups']) in (100, 600)
        assert loaded['meta']['dataset_meta']['palette'][1202] == (
            1202 % 256,
            1202 // 256,
            7,
        ), label


def test_opcode_budget_is_exact():
    """A pickle holding exactly its budget (a tuple of empty dicts) loads;
    one opcode more is refused, naming the figures."""
    dicts = BUDGET - 4  # PROTO, MARK, TUPLE, STOP
    fits = crafted._pickle_zip(b'\x80\x02(' + b'}' * dicts + b't.')
    loaded = torch_load_safely(io.BytesIO(fits), 'fits.pth')
    assert len(loaded) == dicts
    over = crafted._pickle_zip(b'\x80\x02(' + b'}' * (dicts + 1) + b't.')
    with pytest.raises(UnsafeCheckpointError) as error:
        torch_load_safely(io.BytesIO(over), 'over.pth')
    assert (
        f"over.pth was refused: its pickle 'archive/data.pkl' holds "
        f'over {BUDGET} opcodes (stopped at byte {BUDGET + 1}); the '
        f'reader allows {BUDGET} opcodes'
    ) in str(error.value)
    # each tensor record raises the budget
    records = 10
    more = crafted._pickle_zip(
        b'\x80\x02(' + b'}' * (dicts + 1) + b't.', records=records
    )
    assert len(torch_load_safely(io.BytesIO(more), 'more.pth')) == dicts + 1


FLOODS = [
    'memo GET flood',
    'memo PUT far slot',
    'MARK flood (deep stack)',
    'nested tuples (long stack)',
    'empty dicts in a tuple',
    'GLOBAL flood',
    'OrderedDict() REDUCE flood',
    'legacy memo GET flood',
]


@pytest.mark.parametrize('kind', FLOODS)
def test_floods_are_refused_in_a_bounded_scan(kind):
    """1 MB floods: refused by the scan, before either unpickler built
    anything; time and memory are those of reading the file once."""
    data = crafted.KINDS[kind](FLOOD_SIZE)
    outcome, seconds, peak = read_measured(data, 'flood.pth')
    assert isinstance(outcome, UnsafeCheckpointError), outcome
    assert str(outcome).startswith('flood.pth was refused: its pickle ')
    assert peak < 2 * len(data) + 2**20, (peak, len(data))
    assert seconds < 1.0


UNITS = [
    b'}',
    b']',
    b')',
    b'N',
    b'\x88',
    b'K\x07',
    b'J\x00\x00\x00\x01',
    b'G' + struct.pack('>d', 0.5),
    b'X\x03\x00\x00\x00abc',
    b'h\x00',
    b'(',
    b't',
    b'\x85',
    b'\x86',
    b'\x87',
    b'a',
    b'e',
    b's',
    b'u',
    b'q\x00',
    b'r\x01\x00\x00\x00',
]


def random_pickle(rng, size):
    """A protocol-2 pickle of ``size`` bytes: a list in memo slot 0, then
    runs of one random unit each (floods of pushes, marks, tuples, memo
    reads and writes, appends), cut off by STOP."""
    body = bytearray(b'\x80\x02]q\x00')
    while len(body) < size:
        body += rng.choice(UNITS) * rng.choice([1, 3, 100, 10_000])
    return bytes(body[:size]) + b'.'


def test_random_opcode_floods_are_refused_or_load_within_bounds(monkeypatch):
    """Property: whatever a stream of torch-readable opcodes does, reading
    it as a zip or legacy file ends as a ``CheckpointError`` or a load, and
    its memory is the file's plus at most ~100 bytes per allowed opcode
    (a tenth of the base budget here, so that the floods exceed it)."""
    budget = BUDGET // 10
    monkeypatch.setattr(reader, 'PICKLE_OPS_BASE', budget)
    rng = random.Random(0)
    outcomes = set()
    for case in range(30):
        size = rng.choice([1_000, 10_000, 60_000])
        pickle_bytes = random_pickle(rng, size)
        data = (
            pickle_bytes
            if case % 4 == 3
            else crafted._pickle_zip(pickle_bytes)
        )
        outcome, peak = traced_peak(data, f'case {case}')
        assert outcome == 'loaded' or isinstance(outcome, CheckpointError)
        outcomes.add(type(outcome).__name__)
        assert peak < 3 * len(data) + 100 * budget + 2**20, (case, peak)
    # the cases reach torch (loads, its refusals) and the bounds
    assert {'str', 'UnsafeCheckpointError'} <= outcomes, outcomes


def test_memo_slots_out_of_order_or_unset():
    far = crafted.KINDS['memo PUT far slot'](100)
    with pytest.raises(
        UnsafeCheckpointError,
        match='writes memo slot 268435456 at byte 3; the '
        'reader allows slot 0 next',
    ):
        torch_load_safely(io.BytesIO(far), 'far.pth')
    unset = crafted._pickle_zip(b'\x80\x02]q\x00h\x05.')
    with pytest.raises(
        CorruptCheckpointError,
        match='reads memo slot 5 at byte 5 before writing',
    ):
        torch_load_safely(io.BytesIO(unset), 'unset.pth')


def test_opcodes_torch_does_not_read_are_refused():
    """Protocol 4 framing (what ``pickle.dumps`` writes by default)."""
    data = crafted._pickle_zip(
        b'\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.'
    )
    with pytest.raises(
        UnsafeCheckpointError, match=r"holds opcode b'\\x95' at byte 2"
    ):
        torch_load_safely(io.BytesIO(data), 'proto4.pth')


def test_duplicate_and_unknown_members_are_damaged():
    """Two copies of a member (zipfile and torch could read different
    ones), and a compression torch cannot read."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        archive.writestr('archive/data.pkl', b'\x80\x02N.')
        with pytest.warns(UserWarning, match='Duplicate name'):
            archive.writestr('archive/data.pkl', b'\x80\x02N.')
    with pytest.raises(CorruptCheckpointError, match='appears twice'):
        torch_load_safely(io.BytesIO(buffer.getvalue()), 'twice.pth')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_BZIP2) as archive:
        archive.writestr('archive/data.pkl', b'\x80\x02N.')
    with pytest.raises(CorruptCheckpointError, match='zip method 12'):
        torch_load_safely(io.BytesIO(buffer.getvalue()), 'bzip2.pth')


def test_legacy_storages_must_fit_in_the_file():
    """torch allocates a legacy storage's claimed size before it reads its
    bytes: a claim past the file's end is refused first."""
    data = saved(
        {'w': torch.arange(4.0)}, _use_new_zipfile_serialization=False
    )
    # the storage's element count and the tensor's size: 4 -> 2**28
    inflated = data.replace(b'K\x04', b'J\x00\x00\x00\x10')
    with pytest.raises(
        CorruptCheckpointError, match='storages claim 1073741824 bytes'
    ):
        torch_load_safely(io.BytesIO(inflated), 'legacy.pth')
