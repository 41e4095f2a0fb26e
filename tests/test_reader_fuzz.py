"""The checkpoint reader over many small mutated pickles.

Each mutation of a real checkpoint's ``data.pkl`` (bit flips, truncations,
an opcode swapped for another) must end as a refusal
(``CheckpointError``: unsafe or damaged) or as a clean load: never another
exception, a crash or a hang. The cases run in this process: the reader
refuses before numpy or torch build anything from a file's choice of dtype,
layout or object, so a mutation cannot reach memory-unsafe code.
"""

import io
import pickletools
import random
import signal
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmmetaformer.checkpoint import CheckpointError
from mmmetaformer.checkpoint.reader import torch_load_safely

CASES_PER_KIND = 150
OPCODES = [op.code.encode('latin-1') for op in pickletools.opcodes]


@pytest.fixture(scope='module')
def archive():
    """The members of a small checkpoint holding every allowed kind of
    object: tensors, a HistoryBuffer, numpy arrays, dtypes and scalars."""
    history = HistoryBuffer()
    for value in (2.5, 1.5, 0.5):
        history.update(value)
    checkpoint = {
        'meta': {
            'seed': np.int64(7),
            'epoch': 2,
            'name': 'toy',
            'palette': np.array([[1, 2, 3]], np.uint8),
            'shape': torch.Size([2, 3]),
        },
        'state_dict': {
            'conv.weight': torch.randn(2, 3),
            'bn.num_batches_tracked': torch.tensor(4),
        },
        'message_hub': {'log_scalars': {'train/loss': history}},
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        return [(info, source.read(info)) for info in source.infolist()]


def with_pickle(members, data):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as target:
        for info, content in members:
            target.writestr(
                info, data if info.filename.endswith('/data.pkl') else content
            )
    buffer.seek(0)
    return buffer


def mutations(data, rng):
    """(kind, mutated pickle) cases, ``CASES_PER_KIND`` of each kind."""
    positions = [pos for _, _, pos in pickletools.genops(data)]
    for _ in range(CASES_PER_KIND):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield 'bit flip', bytes(flipped)
    for _ in range(CASES_PER_KIND):
        yield 'truncation', data[: rng.randrange(len(data))]
    for _ in range(CASES_PER_KIND):
        pos = rng.choice(positions)
        yield 'opcode swap', data[:pos] + rng.choice(OPCODES) + data[pos + 1 :]


def test_mutated_pickles_are_refused_or_load_cleanly(archive):
    data = next(
        content
        for info, content in archive
        if info.filename.endswith('/data.pkl')
    )
    outcomes = {'refused': 0, 'loaded': 0}

    def hang(*_):
        raise TimeoutError('the reader hangs on a mutated pickle')

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    try:
        for index, (kind, mutated) in enumerate(
            mutations(data, random.Random(0))
        ):
            try:
                torch_load_safely(
                    with_pickle(archive, mutated), f'case {index} ({kind})'
                )
            except CheckpointError:
                outcomes['refused'] += 1
            else:
                outcomes['loaded'] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    # both outcomes occur: the cases reach past the first opcodes
    assert outcomes['refused'] > 0 and outcomes['loaded'] > 0, outcomes


def test_storage_larger_than_its_record_is_refused():
    """torch 2.5.1 would build a 200-float tensor over a 16-byte record."""
    buffer = io.BytesIO()
    torch.save({'w': torch.arange(4.0)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    data = next(
        content
        for info, content in members
        if info.filename.endswith('/data.pkl')
    )
    # the storage's element count, then the tensor's size: 4 -> 200
    assert data.count(b'K\x04') == 2
    buffer = with_pickle(members, data.replace(b'K\x04', b'K\xc8'))
    with pytest.raises(
        CheckpointError,
        match="storage '0' declares 800 bytes, its record holds 16",
    ):
        torch_load_safely(buffer, 'inflated.pth')
