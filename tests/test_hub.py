"""Hugging Face Hub checkpoints: ``hf-hub:`` ids and Hub URLs load through
``huggingface_hub`` and its cache, read by the code-free reader.

No network: each test lays out a Hub cache as huggingface_hub does
(``$HF_HOME/hub/models--ORG--NAME/refs/REVISION`` holds a commit hash,
``snapshots/HASH/FILE`` the file) and runs offline (``HF_HUB_OFFLINE=1``).
huggingface_hub reads ``HF_HOME`` and ``HF_HUB_OFFLINE`` into
``huggingface_hub.constants`` at import and looks them up there at each
call, so in this process the constants are patched; the tool runs get the
environment variables.
"""

import hashlib
import http.server
import multiprocessing
import os
import socket
import threading

from mmmetaformer_tools.launch import LaunchError

import pytest
import timm
import torch
from huggingface_hub import constants
from mmengine.runner import load_checkpoint
from safetensors.torch import save_file

import mmmetaformer  # noqa: F401  (installs the checkpoint schemes)
from mmmetaformer.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from mmmetaformer.checkpoint.hub import (
    HubCheckpointError,
    parse_hub_id,
    parse_hub_url,
)
from mmmetaformer.models.archs import (
    pretrained_hub_id,
    pretrained_url,
    published_weights,
)
from mmmetaformer.registry import MODELS
from tests.helpers import (
    GROWING_TINY_ARCH,
    REPO_ROOT,
    load_tool,
    run_tool,
    tiny_backbone_config,
    tiny_timm_metaformer,
)
from tests.tolerance import assert_close, model_rounding


class HubCache:
    """A Hub cache under ``root`` (``HF_HOME``) in huggingface_hub's layout."""

    def __init__(self, root):
        self.home = root
        self.cache = root / 'hub'

    def put(self, repo_id, filename, source, revision='main'):
        """Place ``source`` (a file) as ``filename`` of ``repo_id`` at
        ``revision`` (a branch or tag: refs/REVISION holds a hash; a
        40-hex commit: the snapshot folder itself). Returns the hash.
        The cache's file is a hard link to ``source``: a real file in the
        cache's layout, without a second copy of its bytes."""
        repo = self.cache / ('models--' + repo_id.replace('/', '--'))
        if len(revision) == 40:
            commit = revision
        else:
            commit = hashlib.sha1(f'{repo_id}@{revision}'.encode()).hexdigest()
            (repo / 'refs').mkdir(parents=True, exist_ok=True)
            (repo / 'refs' / revision).write_text(commit)
        target = repo / 'snapshots' / commit / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.link(source, target)
        return commit

    def env(self):
        """The environment of a tool run against this cache, offline."""
        return dict(
            os.environ,
            HF_HOME=str(self.home),
            HF_HUB_OFFLINE='1',
            OMP_NUM_THREADS='1',
        )


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = HubCache(tmp_path / 'hf_home')
    monkeypatch.setenv('HF_HOME', str(cache.home))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache.cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    # torch hub's cache must stay untouched by Hub URLs
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return cache


def tensors(seed, **shapes):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def safetensors_file(path, state_dict):
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def assert_same(loaded, expected):
    loaded = loaded.get('state_dict', loaded)
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# --- the id syntax ----------------------------------------------------------


@pytest.mark.parametrize(
    'name,parsed',
    [
        (
            'hf-hub:timm/caformer_s18.sail_in22k_ft_in1k',
            ('timm/caformer_s18.sail_in22k_ft_in1k', None, None),
        ),
        (
            'hf-hub:timm/caformer_s18.sail_in1k@v1.0',
            ('timm/caformer_s18.sail_in1k', 'v1.0', None),
        ),
        (
            'hf-hub:sail/dl/caformer/caformer_s18.pth',
            ('sail/dl', None, 'caformer/caformer_s18.pth'),
        ),
        (
            'hf-hub:org/name@refs%2Fpr%2F1/sub/w@2.safetensors',
            ('org/name', 'refs/pr/1', 'sub/w@2.safetensors'),
        ),
    ],
)
def test_hub_id_syntax(name, parsed):
    assert parse_hub_id(name) == parsed


@pytest.mark.parametrize(
    'name',
    [
        'hf-hub:',
        'hf-hub:timm',
        'hf-hub:/x',
        'hf-hub:timm/',
        'hf-hub:org@v1/name',
        'hf-hub:org/name@',
        'hf-hub:org/name/',
    ],
)
def test_malformed_hub_ids_name_the_syntax(name):
    with pytest.raises(HubCheckpointError) as info:
        parse_hub_id(name)
    message = str(info.value)
    assert (
        repr(name) in message
        and 'hf-hub:ORG/NAME[@REVISION][/FILE]' in message
        and '\n' not in message
    )


def test_hub_urls_are_recognised():
    assert parse_hub_url(
        'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth'
    ) == ('sail/dl', 'main', 'caformer/caformer_s18.pth', None)
    assert parse_hub_url(
        'https://hf.co/org/name/resolve/refs%2Fpr%2F2/'
        'model.safetensors?download=true'
    ) == ('org/name', 'refs/pr/2', 'model.safetensors', None)
    assert (
        parse_hub_url(
            'https://huggingface.co/datasets/org/d/resolve/v1/w.pth'
        )[3]
        == 'dataset'
    )
    for other in (
        'https://github.com/sail-sg/poolformer/releases/download/'
        'v1.0/poolformer_s12.pth.tar',
        'https://huggingface.co/sail/dl/blob/main/x.pth',
        '/tmp/huggingface.co/a/b/resolve/main/x.pth',
    ):
        assert parse_hub_url(other) is None


# --- loading -----------------------------------------------------------------


def test_timm_repo_gives_timms_features(hub, tmp_path):
    """A timm repo's model.safetensors through ``init_cfg`` and an hf-hub:
    id gives timm's stage features, and the same numbers as the same file
    from disk. (The repo's variant at a tiny size: what is read does not
    depend on the model's size.)"""
    reference = tiny_timm_metaformer('caformer_s18')
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    reference.eval()
    local = safetensors_file(
        tmp_path / 'model.safetensors', reference.state_dict()
    )
    hub.put('timm/caformer_s18.sail_in22k_ft_in1k', 'model.safetensors', local)

    def ours(checkpoint):
        model = MODELS.build(
            dict(
                type='CAFormer',
                arch=GROWING_TINY_ARCH,
                out_norm_cfg=None,
                init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
            )
        )
        model.init_weights()
        return model.eval()

    from_hub = ours('hf-hub:timm/caformer_s18.sail_in22k_ft_in1k')
    from_disk = ours(str(local))
    x = torch.randn(1, 3, 64, 96, generator=gen)
    with torch.no_grad():
        hub_feats, disk_feats = from_hub(x), from_disk(x)
        timm_feats = reference.forward_intermediates(
            x, intermediates_only=True
        )
    assert len(hub_feats) == len(timm_feats) == 4
    reduction, depth = model_rounding(from_hub)
    for a, b, c in zip(hub_feats, disk_feats, timm_feats):
        assert torch.equal(a, b)
        # timm's Linear MLPs are 1x1 convolutions here: another computation
        assert_close(a, c, reduction, depth)


def test_revision_and_file_in_the_id(hub, tmp_path):
    main = tensors(1, w=(3, 2))
    tagged = tensors(2, w=(3, 2))
    pinned = tensors(3, w=(3, 2))
    hub.put(
        'org/weights',
        'model.safetensors',
        safetensors_file(tmp_path / 'a.safetensors', main),
    )
    hub.put(
        'org/weights',
        'model.safetensors',
        safetensors_file(tmp_path / 'b.safetensors', tagged),
        revision='v2',
    )
    commit = hub.put(
        'org/weights',
        'sub/dir/w.safetensors',
        safetensors_file(tmp_path / 'c.safetensors', pinned),
        revision='ab' * 20,
    )
    assert_same(read_checkpoint('hf-hub:org/weights'), main)
    assert_same(read_checkpoint('hf-hub:org/weights@v2'), tagged)
    assert_same(read_checkpoint('hf-hub:org/weights/model.safetensors'), main)
    assert_same(
        read_checkpoint(f'hf-hub:org/weights@{commit}/sub/dir/w.safetensors'),
        pinned,
    )


def test_mmengine_load_from_reaches_the_hub(hub, tmp_path):
    """``load_from`` and ``load_checkpoint`` go through CheckpointLoader:
    the hf-hub: scheme is registered there."""
    model = torch.nn.Linear(4, 3)
    saved = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    hub.put(
        'org/linear',
        'model.safetensors',
        safetensors_file(tmp_path / 'l.safetensors', saved),
    )
    load_checkpoint(model, 'hf-hub:org/linear', strict=True)
    assert_same(model.state_dict(), saved)


def test_bin_fallback_read_by_the_safe_reader(hub, tmp_path):
    """Without model.safetensors the repo's pytorch_model.bin is read, by
    the same reader that refuses pickled objects."""
    weights = tensors(4, w=(2, 2))
    plain = tmp_path / 'plain.bin'
    torch.save(weights, plain)
    hub.put('org/binonly', 'pytorch_model.bin', plain)
    assert_same(read_checkpoint('hf-hub:org/binonly'), weights)

    pickled = tmp_path / 'pickled.bin'
    torch.save({'w': torch.zeros(1), 'obj': HubCache(tmp_path)}, pickled)
    hub.put('org/pickled', 'pytorch_model.bin', pickled)
    with pytest.raises(UnsafeCheckpointError, match='hf-hub:org/pickled'):
        read_checkpoint('hf-hub:org/pickled')


def test_hub_url_uses_the_hub_cache_not_torch_hub(hub, tmp_path):
    weights = tensors(5, w=(2, 3))
    local = tmp_path / 'caformer_s18.pth'
    torch.save(weights, local)
    hub.put('sail/dl', 'caformer/caformer_s18.pth', local)
    url = pretrained_url('caformer', 's18')
    assert url == (
        'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth'
    )
    assert_same(read_checkpoint(url), weights)
    assert not (tmp_path / 'torch_home').exists()
    # and its Hub id is the same file
    assert (
        pretrained_hub_id('identityformer', 's12')
        == 'hf-hub:sail/dl/identityformer/identityformer_s12.pth'
    )
    assert_same(
        read_checkpoint('hf-hub:sail/dl/caformer/caformer_s18.pth'), weights
    )


@pytest.fixture
def mirror(hub, monkeypatch):
    """A Hub mirror on localhost (``HF_ENDPOINT``) serving ``files``
    (``{(repo_id, filename): bytes}``) as the Hub's resolve endpoint does
    (HEAD with the commit and ETag headers, GET with the bytes; 404 with
    the Hub's X-Error-Code otherwise), online, with a token. Yields
    ``(files, seen)``: ``seen`` records each request's method, path and
    Authorization header."""
    files, seen = {}, []
    commit = 'c0ffee' * 6 + 'c0ff'

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, send_body):
            seen.append(
                (self.command, self.path, self.headers.get('Authorization'))
            )
            parts = self.path.split('/', 5)  # '', org, name, resolve, rev, f
            repo_id = '/'.join(parts[1:3])
            body = files.get((repo_id, parts[-1]))
            if body is None:
                known = any(r == repo_id for r, _ in files)
                self.send_response(404)
                self.send_header(
                    'X-Error-Code',
                    'EntryNotFound' if known else 'RepoNotFound',
                )
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(200)
            self.send_header('X-Repo-Commit', commit)
            self.send_header('ETag', f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f'http://127.0.0.1:{server.server_port}'
    # huggingface_hub computes these from HF_ENDPOINT at import
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(
        constants,
        'HUGGINGFACE_CO_URL_TEMPLATE',
        endpoint + '/{repo_id}/resolve/{revision}/{filename}',
    )
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
    yield files, seen, endpoint
    server.shutdown()


def test_download_through_a_mirror_with_token_and_bin_fallback(
    mirror, tmp_path
):
    """Online: the repo has no model.safetensors (the mirror says so), so
    its pytorch_model.bin is downloaded into the Hub cache, with the token;
    a huggingface.co URL goes to the mirror too; a second read uses the
    cache; a repo the mirror does not have is one line."""
    files, seen, _ = mirror
    weights = tensors(6, w=(2, 2))
    local = tmp_path / 'w.bin'
    torch.save(weights, local)
    files[('org/mirrored', 'pytorch_model.bin')] = local.read_bytes()
    assert_same(read_checkpoint('hf-hub:org/mirrored'), weights)
    # (huggingface_hub 2.x also asks the endpoint's /api/ for other things)
    files_seen = [(m, p, a) for m, p, a in seen if '/resolve/' in p]
    paths = [path for _, path, _ in files_seen]
    assert paths[0] == '/org/mirrored/resolve/main/model.safetensors'
    assert '/org/mirrored/resolve/main/pytorch_model.bin' in paths
    assert {auth for _, _, auth in files_seen} == {'Bearer hf_test_token'}
    assert any(
        (
            tmp_path / 'hf_home' / 'hub' / 'models--org--mirrored' / 'blobs'
        ).iterdir()
    )
    assert_same(
        read_checkpoint(
            'https://huggingface.co/org/mirrored/'
            'resolve/main/pytorch_model.bin'
        ),
        weights,
    )
    gets = [p for m, p, _ in seen if m == 'GET' and '/resolve/' in p]
    assert len(gets) == 1  # downloaded once, then read from the cache
    with pytest.raises(HubCheckpointError) as info:
        read_checkpoint('hf-hub:nobody/nothing')
    message = str(info.value)
    assert '\n' not in message and message.startswith(
        'hf-hub:nobody/nothing: no repository nobody/nothing on '
        'http://127.0.0.1:'
    )
    assert 'HF_TOKEN' in message


def _rank_reads_a_hub_checkpoint(rank, port, out_dir):
    """One rank of a two-process gloo run on one node, as torchrun starts
    it (``LOCAL_RANK`` set, no mmengine local process group)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE='2',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist

    dist.init_process_group('gloo', init_method='env://')
    try:
        torch.save(
            read_checkpoint('hf-hub:org/mirrored'),
            os.path.join(out_dir, f'rank{rank}.pth'),
        )
    finally:
        dist.destroy_process_group()


def test_first_rank_of_the_node_downloads(mirror, monkeypatch, tmp_path):
    """Two ranks read one Hub id: the first downloads, the other waits at
    the barrier and takes the file from the cache (the mirror sees one
    rank's requests)."""
    files, seen, endpoint = mirror
    weights = tensors(7, w=(3, 3))
    local = tmp_path / 'w.bin'
    torch.save(weights, local)
    files[('org/mirrored', 'pytorch_model.bin')] = local.read_bytes()
    # the spawned processes read these at import
    monkeypatch.setenv('HF_ENDPOINT', endpoint)
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context('spawn')
    ranks = [
        context.Process(
            target=_rank_reads_a_hub_checkpoint,
            args=(rank, port, str(tmp_path)),
        )
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(240)
    assert [p.exitcode for p in ranks] == [0, 0]
    for rank in range(2):
        assert_same(torch.load(tmp_path / f'rank{rank}.pth'), weights)
    resolves = [(m, p) for m, p, _ in seen if '/resolve/' in p]
    assert (
        resolves.count(('GET', '/org/mirrored/resolve/main/pytorch_model.bin'))
        == 1
    )
    assert (
        resolves.count(
            ('HEAD', '/org/mirrored/resolve/main/model.safetensors')
        )
        == 1
    )


# --- absent files ------------------------------------------------------------


def test_absent_file_offline_is_one_line_naming_repo_file_and_command(hub):
    with pytest.raises(HubCheckpointError) as info:
        read_checkpoint('hf-hub:timm/convformer_s18.sail_in1k')
    message = str(info.value)
    assert '\n' not in message
    assert 'timm/convformer_s18.sail_in1k' in message
    assert 'model.safetensors' in message and 'HF_HUB_OFFLINE' in message
    assert (
        'download timm/convformer_s18.sail_in1k model.safetensors' in message
    )
    with pytest.raises(
        HubCheckpointError,
        match=(
            r'^hf-hub:nobody/nothing@v3/x\.pth: x\.pth of nobody/nothing '
            r'\(revision v3\) is not in the Hugging Face cache .*'
            r'download nobody/nothing x\.pth --revision v3'
        ),
    ):
        read_checkpoint('hf-hub:nobody/nothing@v3/x.pth')
    # a Hub URL the same way
    with pytest.raises(
        HubCheckpointError,
        match=r'sail/dl.*'
        r'randformer/randformer_s12\.pth',
    ):
        read_checkpoint(pretrained_url('randformer', 's12'))
    assert issubclass(HubCheckpointError, CheckpointError)


def test_tools_take_hub_ids_and_exit_2_with_one_line(hub, tmp_path):
    """The converter converts a Hub id (the repo's variant at a tiny size,
    checked against that backbone), and (in a process of its own, the
    Hub's settings read from the environment) refuses an absent one with
    one line and exit status 2. train.py refuses a Hub id for --resume
    before anything is built."""
    reference = tiny_timm_metaformer('poolformerv2_s12')
    hub.put(
        'timm/poolformerv2_s12.sail_in1k',
        'model.safetensors',
        safetensors_file(tmp_path / 'p.safetensors', reference.state_dict()),
    )
    dst = tmp_path / 'converted.pth'
    convert = load_tool('convert_checkpoint.py')
    assert (
        convert.main(
            [
                'hf-hub:timm/poolformerv2_s12.sail_in1k',
                str(dst),
                '--check-config',
                str(
                    tiny_backbone_config(
                        tmp_path, 'PoolFormerV2', GROWING_TINY_ARCH
                    )
                ),
            ]
        )
        == 0
    )
    assert read_checkpoint(dst)['meta']['source_format'] == 'timm'

    absent = run_tool(
        'convert_checkpoint.py',
        'hf-hub:nobody/nothing',
        tmp_path / 'x.pth',
        env=hub.env(),
        timeout=300,
    )
    assert absent.returncode == 2
    lines = absent.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in absent.stderr
    assert 'nobody/nothing' in lines[0] and 'model.safetensors' in lines[0]
    assert str(hub.cache) in lines[0]  # HF_HOME from the environment
    assert not (tmp_path / 'x.pth').exists()

    train = load_tool('train.py')
    with pytest.raises(LaunchError) as info:
        train.main(
            [
                'configs/toy/retinanet_poolformer_s12_toy_coco.py',
                '--resume',
                'hf-hub:timm/poolformer_s12.sail_in1k',
            ]
        )
    message = str(info.value)
    assert '\n' not in message and message.startswith(
        '--resume takes a local training'
    )
    assert 'load_from=hf-hub:timm/poolformer_s12.sail_in1k' in message


# --- the published ids -------------------------------------------------------


def test_published_hub_ids_are_timms_names():
    """Every ``hf-hub:timm/`` id is a pretrained cfg of the installed timm
    with that Hub repo; the others are the authors' Hub files."""
    table = published_weights()
    timm_ids = [h for h in table.values() if h.startswith('hf-hub:timm/')]
    assert len(timm_ids) == 5 + 5 + 2 * 4 * 5 + 3
    for hub_id in timm_ids:
        name = hub_id[len('hf-hub:timm/') :]
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.hf_hub_id == f'timm/{name}', hub_id
    for url, hub_id in table.items():
        if not hub_id.startswith('hf-hub:timm/'):
            repo, revision, filename = parse_hub_id(hub_id)
            assert parse_hub_url(url) == (repo, 'main', filename, None)
    assert (
        pretrained_hub_id('caformer', 's18', 'in21ft1k')
        == 'hf-hub:timm/caformer_s18.sail_in22k_ft_in1k'
    )
    with pytest.raises(ValueError, match="No 'in21k' weights"):
        pretrained_hub_id('poolformerv2', 's12', 'in21k')


def test_metafile_gives_each_pretrained_its_hub_id():
    from tests.test_model_index import index_tool

    tool = index_tool()
    _, metafiles = tool.read_index(REPO_ROOT)
    models = [m for _, data in metafiles for m in data['Models']]
    assert models and tool.check_pretrained(models) == []
    entry = dict(models[0], Metadata=dict(models[0]['Metadata']))
    entry['Metadata']['Pretrained Hub'] = 'hf-hub:timm/elsewhere'
    [problem] = tool.check_pretrained([entry])
    assert problem.startswith(
        f'{entry["Name"]}: Pretrained Hub hf-hub:timm/elsewhere but '
    )


def test_every_configs_timm_weights_fit_its_backbone(monkeypatch):
    """Each timm Hub id a config names (its metafile entry's Pretrained
    Hub) holds timm's state dict of that model, which converts to exactly
    the backbone the entry's config builds: every tensor of it present with
    its shape, nothing left over but timm's classifier, only the new layers
    (output norms, ConvMixer's adapter) missing. Both built on ``meta``:
    names and shapes only (the numbers are test_checkpoints.py's parity)."""
    from mmmetaformer.checkpoint import to_native
    from mmmetaformer.checkpoint.formats import CLASSIFIER_PREFIXES
    from mmmetaformer.checkpoint.loading import compare_state_dicts
    from tests.helpers import metafile_entries
    from tests.test_model_index import index_tool

    backbone_of = index_tool().backbone_of
    weights = {
        (m['Metadata']['Pretrained Hub'], backbone_of(m))
        for m in metafile_entries().values()
    }
    timm_weights = sorted(
        w for w in weights if w[0].startswith('hf-hub:timm/')
    )
    # PoolFormer v1/v2 sizes; ConvFormer, CAFormer sizes and their 21k -> 1k
    # M36/B36 (and ConvFormer-S18's, configs/examples/); ConvMixer
    assert len(timm_weights) == 5 + 5 + (4 + 3) + (4 + 2) + 3
    # timm's random init on meta tensors (trunc_normal_ decomposed op by
    # op) takes seconds per model and sets nothing a meta tensor keeps.
    monkeypatch.setattr(
        timm.models.metaformer.MetaFormer,
        '_init_weights',
        lambda self, module: None,
    )
    for hub_id, (backbone_type, arch) in timm_weights:
        with torch.device('meta'):
            published = timm.create_model(
                hub_id[len('hf-hub:timm/') :], pretrained=False
            ).state_dict()
            model = MODELS.build(dict(type=backbone_type, arch=arch))
        native, fmt, _ = to_native(published)
        assert fmt == 'timm', hub_id
        fit = compare_state_dicts(model.state_dict(), native)
        assert fit.unfit == [], hub_id
        assert fit.missing and all(
            k.startswith(model.new_layer_prefixes) for k in fit.missing
        ), hub_id
        assert fit.unexpected and all(
            k.startswith(CLASSIFIER_PREFIXES) for k in fit.unexpected
        ), hub_id
