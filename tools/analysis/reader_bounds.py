"""Worst-case time and memory of the safe reader on crafted checkpoints.

Each kind of crafted file (zip bombs, opcode floods, many tiny tensors, the
legacy format) is made at each size and read once in a fresh process by
``torch_load_safely``; a row gives the outcome, the seconds and the peak
memory the read added (the peak resident set, reset before the read through
``/proc/self/clear_refs``, and tracemalloc's peak of Python allocations in a
second, traced read), as multiples of the file size.

    python tools/analysis/reader_bounds.py --sizes 10000 1000000 10000000
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import zipfile

import torch

MEMBER = 'archive/data.pkl'
GET0 = b'h\x00'


def _zip(members, deflated=()):
    """A zip of ``(name, bytes or chunk iterator)``, as torch.save lays it
    out; names in ``deflated`` are deflated (streamed: a bomb's expanded
    bytes are never held)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, content in members:
            info = zipfile.ZipInfo(name)
            if name in deflated:
                info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, 'w', force_zip64=True) as member:
                for chunk in (
                    [content] if isinstance(content, bytes) else content
                ):
                    member.write(chunk)
    return buffer.getvalue()


def _pickle_zip(pickle_bytes, records=0):
    members = [
        (MEMBER, pickle_bytes),
        ('archive/version', b'3\n'),
        ('archive/byteorder', b'little'),
    ]
    members += [(f'archive/data/{i}', b'') for i in range(records)]
    return _zip(members)


def _flood(unit, size, head=b'\x80\x02]q\x00', tail=b'.'):
    return head + unit * max(1, (size - len(head) - 1) // len(unit)) + tail


def _zeros(total, chunk=1 << 20):
    for offset in range(0, total, chunk):
        yield bytes(min(chunk, total - offset))


def pickle_bomb(size):
    """A deflated data.pkl holding one string of zeros, ~1000x the file
    (at most 1 GiB)."""
    expanded = min(1000 * size, 1 << 30)
    head = b'\x80\x02X' + struct.pack('<I', expanded)
    return _zip(
        [
            (MEMBER, iter([head, *_zeros(expanded), b'.'])),
            ('archive/version', b'3\n'),
        ],
        deflated={MEMBER},
    )


def record_bomb(size):
    """A legitimate-looking checkpoint whose one uint8 tensor record is
    deflated zeros, ~1000x the file (at most 1 GiB)."""
    numel = min(1000 * size, 1 << 30)
    buffer = io.BytesIO()
    torch.save({'w': torch.zeros(1, dtype=torch.uint8)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        members = {name: source.read(name) for name in source.namelist()}
    data_pkl = next(n for n in members if n.endswith('/data.pkl'))
    record = next(n for n in members if '/data/' in n)
    # the storage's numel (K\x01) and the tensor's size (K\x01) -> numel
    members[data_pkl] = members[data_pkl].replace(
        b'K\x01', b'J' + struct.pack('<i', numel)
    )
    members[record] = _zeros(numel)
    return _zip(members.items(), deflated={record})


def many_tiny_tensors(size):
    """torch.save of as many one-element tensors as fit in ``size``: the
    most tensor records, and so the largest opcode budget, per byte."""
    count = max(1, size // 230)
    buffer = io.BytesIO()
    torch.save(
        {str(i): torch.zeros(1, dtype=torch.uint8) for i in range(count)},
        buffer,
    )
    return buffer.getvalue()


def records_and_dicts(size):
    """Empty tensor records (each raises the opcode budget) and a pickle of
    empty dicts in one tuple, as many as the budget allows: the most Python
    objects a file of this size may ask torch to build."""
    from mmmetaformer.checkpoint import reader

    records = size // 2 // 160  # a record costs ~150 bytes of the zip
    budget = reader.PICKLE_OPS_BASE + reader.PICKLE_OPS_PER_RECORD * records
    dicts = min(budget - 4, size // 2)
    return _pickle_zip(b'\x80\x02(' + b'}' * dicts + b't.', records)


KINDS = {
    'pickle zip bomb (x1000)': pickle_bomb,
    'record zip bomb (x1000)': record_bomb,
    'memo GET flood': lambda s: _pickle_zip(_flood(GET0 + b'a', s)),
    'memo PUT far slot': lambda s: _pickle_zip(
        b'\x80\x02N' + b'r' + struct.pack('<I', 1 << 28) + b'.' + bytes(s)
    ),
    'MARK flood (deep stack)': lambda s: _pickle_zip(_flood(b'(', s)),
    'nested tuples (long stack)': lambda s: _pickle_zip(
        _flood(b'\x85', s, head=b'\x80\x02)')
    ),
    'empty dicts in a tuple': lambda s: _pickle_zip(
        _flood(b'}', s, head=b'\x80\x02(', tail=b't.')
    ),
    'GLOBAL flood': lambda s: _pickle_zip(_flood(b'cfoo\nbar\n', s)),
    'OrderedDict() REDUCE flood': lambda s: _pickle_zip(
        _flood(b'h\x00)R', s, head=b'\x80\x02ccollections\nOrderedDict\nq\x00')
    ),
    'legacy memo GET flood': lambda s: _flood(GET0 + b'a', s),
    'many tiny tensors (legitimate)': many_tiny_tensors,
    'empty records + dicts budget': records_and_dicts,
}

_CHILD = r"""
import gc, json, sys, time, tracemalloc
from mmmetaformer.checkpoint import CheckpointError
from mmmetaformer.checkpoint.reader import torch_load_safely


def kib(field):  # a line of /proc/self/status
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f
                    if line.startswith(field + ':'))


path = sys.argv[1]
gc.collect()
with open('/proc/self/clear_refs', 'w') as f:  # peak RSS := RSS now
    f.write('5')
before = kib('VmRSS')
for traced in (False, True):
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        result = torch_load_safely(path, path)
        outcome = 'loaded'
    except CheckpointError as exc:
        outcome = type(exc).__name__ + ': ' + str(exc).split(' Nothing')[0]
    seconds = time.perf_counter() - start
    if not traced:
        rss = kib('VmHWM') - before
        result = None
        gc.collect()
        timed = seconds
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({'outcome': outcome, 'seconds': timed,
                  'rss_bytes': rss * 1024, 'traced_peak_bytes': peak}))
"""


def measure(path):
    """Outcome, seconds and peak memory of one read in a fresh process."""
    out = subprocess.run(
        [sys.executable, '-c', _CHILD, path],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return json.loads(out.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--sizes', type=int, nargs='+', default=[10_000, 1_000_000, 10_000_000]
    )
    parser.add_argument(
        '--kinds', nargs='+', choices=list(KINDS), default=list(KINDS)
    )
    parser.add_argument('--workdir', default='/tmp')
    args = parser.parse_args()
    print('| file | size | outcome | s | peak RSS added | traced peak |')
    print('|---|---|---|---|---|---|')
    for kind in args.kinds:
        for size in args.sizes:
            data = KINDS[kind](size)
            path = f'{args.workdir}/reader_bounds_{size}.pth'
            with open(path, 'wb') as f:
                f.write(data)
            try:
                row = measure(path)
            finally:
                os.remove(path)
            print(
                f'| {kind} | {len(data)} B | {row["outcome"][:110]} | '
                f'{row["seconds"]:.3f} | '
                f'{row["rss_bytes"] / len(data):.1f}x '
                f'({row["rss_bytes"] / 2**20:.1f} MiB) | '
                f'{row["traced_peak_bytes"] / len(data):.1f}x |',
                flush=True,
            )


if __name__ == '__main__':
    main()
