"""Data sets: the IDX and CIFAR-10 parsers, checksums, the lookup order, and downloads from a real HTTP server on 127.0.0.1.

No test needs the internet: the download tests start `http.server` in a thread on 127.0.0.1 (port 0), point a loader's
`SOURCES` entry at it, and serve small files in the real formats, made here. Tests that read Debian's Fashion-MNIST
files skip when the package is not installed.
"""
import gzip
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tinytorch.data.loader import (SOURCES, ChecksumError, DownloadError, check_sha256, download_file, get_data_home,
                                   load_cifar10, load_digits, load_fashion_mnist, load_mnist, parse_cifar10_batch, parse_idx)

HYPOTHESIS = settings(max_examples=80)  # applied to this file's property tests by conftest.py

MNIST_FILES = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
IDX_CODES = {np.dtype('u1'): 0x08, np.dtype('i1'): 0x09, np.dtype('>i2'): 0x0B, np.dtype('>i4'): 0x0C,
             np.dtype('>f4'): 0x0D, np.dtype('>f8'): 0x0E}


def sha256(data: bytes) -> str: return hashlib.sha256(data).hexdigest()


def idx_bytes(a: np.ndarray) -> bytes:
    "IDX encoding of `a`, written from the format's description (the oracle for the parser)."
    big = a.dtype.newbyteorder('>')                                        # uint8 and int8 have no byte order
    return bytes([0, 0, IDX_CODES[big], a.ndim]) + struct.pack(f'>{a.ndim}I', *a.shape) + a.astype(big).tobytes()


# The IDX parser

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@given(st.sampled_from(list(IDX_CODES)), shapes, st.data())
def test_parse_idx_round_trip(dtype, shape, data):
    native = dtype.newbyteorder('=')
    elements = st.floats(-1e6, 1e6, width=8 * native.itemsize) if native.kind == 'f' else None
    a = data.draw(arrays(native, shape, elements=elements))
    out = parse_idx(idx_bytes(a))
    assert out.dtype == native and out.dtype.isnative and out.shape == shape and out.flags.writeable
    np.testing.assert_array_equal(out, a)


@given(st.sampled_from(list(IDX_CODES)), st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), st.integers(1, 9))
def test_parse_idx_refuses_wrong_lengths(dtype, shape, cut):
    good = idx_bytes(np.zeros(shape, dtype.newbyteorder('=')))
    with pytest.raises(ValueError, match=r"holds [\d,]+ bytes, but shape .* needs"): parse_idx(good + b'\0' * cut)
    if cut < len(good) - 4 - 4 * len(shape):  # a cut inside the values; longer cuts end inside the header
        with pytest.raises(ValueError, match=r"holds [\d,]+ bytes, but shape .* needs"): parse_idx(good[:-cut])


def test_parse_idx_header_errors():
    with pytest.raises(ValueError, match="does not start with an IDX magic number 00 00 <type> <ndim>, got '1f 8b'"): parse_idx(b'\x1f\x8b')
    with pytest.raises(ValueError, match="unknown type code 0x0a"): parse_idx(bytes([0, 0, 0x0A, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="f.idx ends inside its header: 9 bytes, the header of 3 sizes needs 16"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0]), 'f.idx')


def test_parse_cifar10_batch_layout():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    y = np.array([0, 9, 3, 3])
    data = b''.join(bytes([int(l)]) + x.tobytes() for x, l in zip(X, y))    # record: label, then R, G, B planes row by row
    Xp, yp = parse_cifar10_batch(data)
    np.testing.assert_array_equal(Xp, X)
    assert yp.tolist() == y.tolist() and yp.dtype == np.int64 and Xp.flags.writeable
    with pytest.raises(ValueError, match="holds 12,291 bytes, not a whole number of 3,073-byte records"): parse_cifar10_batch(data[:-1])


# Checksums

def test_check_sha256_file_and_content_digests(tmp_path):
    content = b'some idx bytes'
    a, b = tmp_path / 'a.gz', tmp_path / 'b.gz'
    a.write_bytes(gzip.compress(content, mtime=0))
    b.write_bytes(gzip.compress(content, mtime=12345))                      # same content, another header
    check_sha256(a, sha256(a.read_bytes()))
    with pytest.raises(ChecksumError, match=f"has SHA-256 {sha256(b.read_bytes())}, expected {sha256(a.read_bytes())}$"):
        check_sha256(b, sha256(a.read_bytes()))
    check_sha256(b, sha256(a.read_bytes()), content_sha256=sha256(content))
    with pytest.raises(ChecksumError, match=f"its content has SHA-256 {sha256(content)}, expected {'0' * 64}"):
        check_sha256(b, sha256(a.read_bytes()), content_sha256='0' * 64)
    (tmp_path / 'c.gz').write_bytes(a.read_bytes()[:-5])                    # truncated gzip
    with pytest.raises(ChecksumError, match="is not readable gzip"):
        check_sha256(tmp_path / 'c.gz', sha256(a.read_bytes()), content_sha256=sha256(content))


# A real HTTP server on 127.0.0.1

class Server:
    "`http.server` on 127.0.0.1, port 0, in a thread: serves `files` (name -> bytes), can cut bodies short, counts requests."
    def __init__(self):
        self.files, self.short, self.no_length, self.requests = {}, {}, set(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):   # HTTP/1.0: the connection closes after each response
            def do_GET(self):
                name = self.path.lstrip('/')
                outer.requests.append(name)
                if name not in outer.files: return self.send_error(404)
                body = outer.files[name]
                self.send_response(200)
                if name not in outer.no_length: self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body[:outer.short.get(name, len(body))])  # a short body, then the connection closes

            def log_message(self, *args): pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "An empty cache folder for this test, through TINYTORCH_DATA."
    monkeypatch.setenv('TINYTORCH_DATA', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def mnist_like(seed=0, n_train=7, n_test=3):
    "Four gzipped IDX files in MNIST's format (names -> bytes) and the arrays they hold."
    rng = np.random.default_rng(seed)
    arrays_ = {'train-images': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
               'train-labels': rng.integers(0, 10, n_train, dtype=np.uint8),
               't10k-images': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
               't10k-labels': rng.integers(0, 10, n_test, dtype=np.uint8)}
    names = dict(zip(arrays_, MNIST_FILES))
    return {names[k]: gzip.compress(idx_bytes(a), mtime=0) for k, a in arrays_.items()}, arrays_


def serve(monkeypatch, server, key, files, system_dirs=()):
    "Point SOURCES[key] at `server`, serving `files`, with their SHA-256 as the published values."
    server.files.update(files)
    monkeypatch.setattr(SOURCES[key], 'url', server.url)
    monkeypatch.setattr(SOURCES[key], 'files', {n: (sha256(b), None) for n, b in files.items()})
    monkeypatch.setattr(SOURCES[key], 'system_dirs', tuple(map(str, system_dirs)))


def check_arrays(out, arrays_):
    X_train, y_train, X_test, y_test = out
    np.testing.assert_array_equal(X_train, arrays_['train-images'])
    np.testing.assert_array_equal(X_test, arrays_['t10k-images'])
    assert y_train.dtype == y_test.dtype == np.int64 and X_train.dtype == np.uint8
    assert y_train.tolist() == arrays_['train-labels'].tolist() and y_test.tolist() == arrays_['t10k-labels'].tolist()


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob('*') if p.name.startswith('.') or p.suffix == '.part')


def test_download_into_cache_then_read_from_cache(server, cache, monkeypatch):
    files, arrays_ = mnist_like()
    serve(monkeypatch, server, 'mnist', files)
    check_arrays(load_mnist(), arrays_)
    assert sorted(server.requests) == sorted(MNIST_FILES)
    assert sorted(p.name for p in (cache / 'mnist').iterdir()) == sorted(MNIST_FILES) and not leftovers(cache)
    check_arrays(load_mnist(), arrays_)
    assert len(server.requests) == 4                                       # the second load downloads nothing


def test_fashion_mnist_uses_its_own_source(server, cache, monkeypatch):
    files, arrays_ = mnist_like(seed=1)
    serve(monkeypatch, server, 'fashion-mnist', files)
    check_arrays(load_fashion_mnist(), arrays_)
    assert (cache / 'fashion-mnist' / MNIST_FILES[0]).is_file()


def test_wrong_checksum_is_deleted_and_reported(server, cache, monkeypatch):
    files, _ = mnist_like()
    serve(monkeypatch, server, 'mnist', files)
    server.files['t10k-labels-idx1-ubyte.gz'] = gzip.compress(idx_bytes(np.zeros(3, np.uint8)), mtime=0)  # not the published file
    with pytest.raises(FileNotFoundError) as e: load_mnist()
    msg = str(e.value)
    assert f"download failed: download_file: {server.url}t10k-labels-idx1-ubyte.gz does not match its published SHA-256, deleted" in msg
    assert not (cache / 'mnist' / 't10k-labels-idx1-ubyte.gz').exists() and not leftovers(cache)
    assert '\n' not in msg


@pytest.mark.parametrize("keep_length", [True, False])
def test_truncated_download_is_reported_and_leaves_no_file(server, cache, monkeypatch, keep_length):
    files, _ = mnist_like()
    serve(monkeypatch, server, 'mnist', files)
    name = 'train-images-idx3-ubyte.gz'
    server.short[name] = 1000                                              # the connection closes after 1,000 bytes
    if not keep_length: server.no_length.add(name)
    with pytest.raises(FileNotFoundError) as e: load_mnist()
    size = len(files[name])
    # with a Content-Length the length check catches it; without one, only the checksum can
    expected = f"{server.url}{name} ended after 1,000 of {size:,} bytes" if keep_length else f"{server.url}{name} does not match"
    assert expected in str(e.value)
    assert not (cache / 'mnist' / name).exists() and not leftovers(cache)


def test_download_file_errors_name_the_address(server, tmp_path):
    server.files['x'] = b'abc'
    with pytest.raises(OSError, match="HTTP Error 404"): download_file(server.url + 'missing', tmp_path / 'm', sha256(b'abc'))
    server.short['x'] = 1
    with pytest.raises(DownloadError, match=r"x ended after 1 of 3 bytes"): download_file(server.url + 'x', tmp_path / 'x', sha256(b'abc'))
    assert list(tmp_path.iterdir()) == []
    del server.short['x']
    assert download_file(server.url + 'x', tmp_path / 'sub' / 'x', sha256(b'abc')).read_bytes() == b'abc'


def test_corrupt_cached_file_is_deleted_warned_and_downloaded_again(server, cache, monkeypatch):
    files, arrays_ = mnist_like()
    serve(monkeypatch, server, 'mnist', files)
    load_mnist()
    damaged = cache / 'mnist' / 'train-labels-idx1-ubyte.gz'
    damaged.write_bytes(damaged.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="train-labels-idx1-ubyte.gz has SHA-256 .*; deleted it"):
        check_arrays(load_mnist(), arrays_)
    assert server.requests[4:] == ['train-labels-idx1-ubyte.gz']


def test_root_comes_first_and_its_bad_files_are_reported_not_deleted(server, cache, tmp_path, monkeypatch):
    files, arrays_ = mnist_like()
    serve(monkeypatch, server, 'mnist', files)
    root = tmp_path / 'mine'
    root.mkdir()
    for n, b in files.items(): (root / n).write_bytes(b)
    check_arrays(load_mnist(root=root), arrays_)
    assert server.requests == []
    (root / MNIST_FILES[1]).write_bytes(b'not the file')
    with pytest.warns(UserWarning, match=f"{MNIST_FILES[1]} has SHA-256"):
        check_arrays(load_mnist(root=str(root)), arrays_)                   # falls through to a download
    assert (root / MNIST_FILES[1]).read_bytes() == b'not the file'          # someone else's file: kept


def test_system_folder_after_cache_and_content_digest(server, cache, tmp_path, monkeypatch):
    files, arrays_ = mnist_like()
    system = tmp_path / 'usr-share'
    system.mkdir()
    for n, b in files.items():                                                 # recompressed, as Debian's build does
        (system / n).write_bytes(gzip.compress(gzip.decompress(b), mtime=1591347949))
    serve(monkeypatch, server, 'mnist', files, system_dirs=[system])
    with pytest.warns(UserWarning, match="has SHA-256"):                     # without a content digest: not accepted
        load_mnist()
    assert len(server.requests) == 4
    for p in (cache / 'mnist').iterdir(): p.unlink()
    monkeypatch.setattr(SOURCES['mnist'], 'files', {n: (sha256(b), sha256(gzip.decompress(b))) for n, b in files.items()})
    check_arrays(load_mnist(), arrays_)
    assert len(server.requests) == 4                                       # read from the system folder


def test_missing_data_is_one_line_naming_places_and_remedy(server, cache, tmp_path, monkeypatch):
    serve(monkeypatch, server, 'fashion-mnist', {}, system_dirs=[tmp_path / 'nowhere'])
    monkeypatch.setattr(SOURCES['fashion-mnist'], 'files', {n: ('0' * 64, None) for n in MNIST_FILES})
    with pytest.raises(FileNotFoundError) as e: load_fashion_mnist(download=False)
    assert str(e.value) == (f"load_fashion_mnist: no data in root=None, {cache / 'fashion-mnist'}, {tmp_path / 'nowhere'}; "
                            "download=False. Install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) "
                            "or pass root=")
    with pytest.raises(FileNotFoundError, match=f"no data in root='/x', .*; download failed: HTTP Error 404: .*pass root="):
        load_fashion_mnist(root='/x')


def test_parsed_contents_are_checked(server, cache, monkeypatch):
    files, _ = mnist_like()
    files['train-images-idx3-ubyte.gz'] = gzip.compress(idx_bytes(np.zeros((7, 27, 28), np.uint8)), mtime=0)
    serve(monkeypatch, server, 'mnist', files)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz holds uint8 of shape \(7, 27, 28\), expected uint8 \(N, 28, 28\)"):
        load_mnist()
    files, _ = mnist_like()
    files['t10k-labels-idx1-ubyte.gz'] = gzip.compress(idx_bytes(np.array([1, 2, 10], np.uint8)), mtime=0)
    files['t10k-images-idx3-ubyte.gz'] = gzip.compress(b'\0\0\x08\x03' + struct.pack('>3I', 3, 28, 28) + b'\0' * 100, mtime=0)
    serve(monkeypatch, server, 'mnist', files)
    for p in (cache / 'mnist').iterdir(): p.unlink()
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 116 bytes, but shape \(3, 28, 28\) of uint8 needs 2,368"):
        load_mnist()


# CIFAR-10, binary version

def cifar_archive(members: dict, links=()) -> bytes:
    "A tar.gz with `members` (name -> bytes) and symbolic links (name, target)."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return buf.getvalue()


def cifar_like(seed=0):
    rng = np.random.default_rng(seed)
    batches = {f: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
               for f, n in zip([f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin'], [2, 1, 3, 2, 2, 4])}
    members = {f'cifar-10-batches-bin/{f}': b''.join(bytes([int(l)]) + x.tobytes() for x, l in zip(X, y))
               for f, (X, y) in batches.items()}
    members['cifar-10-batches-bin/batches.meta.txt'] = b'airplane\n'
    return members, batches


def test_cifar10_download_and_parse(server, cache, monkeypatch):
    members, batches = cifar_like()
    serve(monkeypatch, server, 'cifar10', {'cifar-10-binary.tar.gz': cifar_archive(members)})
    X_train, y_train, X_test, y_test = load_cifar10()
    train = [batches[f'data_batch_{i}.bin'] for i in range(1, 6)]
    np.testing.assert_array_equal(X_train, np.concatenate([x for x, _ in train]))
    assert y_train.tolist() == np.concatenate([y for _, y in train]).tolist() and X_train.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(X_test, batches['test_batch.bin'][0])
    assert y_test.tolist() == batches['test_batch.bin'][1].tolist() and y_test.dtype == np.int64


@pytest.mark.parametrize("bad, links", [
    ({'cifar-10-batches-bin/../../escaped.bin': b'x'}, ()),
    ({'/tmp/absolute.bin': b'x'}, ()),
    ({}, [('cifar-10-batches-bin/link.bin', '/etc/passwd')]),
])
def test_cifar10_refuses_unsafe_archives_and_writes_nothing(server, cache, tmp_path, monkeypatch, bad, links):
    members, _ = cifar_like()
    serve(monkeypatch, server, 'cifar10', {'cifar-10-binary.tar.gz': cifar_archive({**members, **bad}, links)})
    before = set(tmp_path.parent.rglob('*'))
    with pytest.raises(ValueError, match="holds an unsafe member .*; refusing the archive"): load_cifar10()
    new = {p for p in set(tmp_path.parent.rglob('*')) - before if p != cache and cache not in p.parents}
    assert new == set() and not Path('/tmp/absolute.bin').exists()        # nothing but the downloaded archive


def test_cifar10_archive_missing_a_batch(server, cache, monkeypatch):
    members, _ = cifar_like()
    del members['cifar-10-batches-bin/data_batch_3.bin']
    serve(monkeypatch, server, 'cifar10', {'cifar-10-binary.tar.gz': cifar_archive(members)})
    with pytest.raises(ValueError, match=r"lacks cifar-10-batches-bin/\['data_batch_3.bin'\]"): load_cifar10()


# Folders and the digits

def test_data_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv('TINYTORCH_DATA', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/ignored')
    assert get_data_home() == tmp_path / 'home' / '.cache' / 'tinytorch'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert get_data_home() == tmp_path / 'xdg' / 'tinytorch'
    monkeypatch.setenv('TINYTORCH_DATA', str(tmp_path / 'data'))
    assert get_data_home() == tmp_path / 'data'


def test_digits_split_is_the_training_modules():
    from importlib.resources import files
    with gzip.open(files('tinytorch') / 'data' / 'digits.csv.gz', 'rt') as f:
        table = np.loadtxt(f, delimiter=',', dtype=np.float32)
    perm = np.random.default_rng(0).permutation(1797)                     # as nbs/07_training.py splits it
    X_train, y_train, X_test, y_test = load_digits()
    np.testing.assert_array_equal(X_test.reshape(-1, 64), table[perm[:359], :64] / 16)
    np.testing.assert_array_equal(y_train, table[perm[359:], 64].astype(np.int64))
    assert X_train.shape == (1438, 1, 8, 8) and load_digits(flatten=True)[2].shape == (359, 64)


# Debian's Fashion-MNIST, where installed

DEBIAN = Path('/usr/share/datasets/fashion-mnist')
needs_debian = pytest.mark.skipif(not all((DEBIAN / n).is_file() for n in MNIST_FILES),
                                  reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")

# The MD5s that the Fashion-MNIST README (zalandoresearch/fashion-mnist, "Get the Data") publishes for its .gz files.
README_MD5 = {'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d', 'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
              't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79', 't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310'}
# The gzip time stamps of the published files (UTC 2017-08-31 10:50:06 and 10:50:27), found by restoring the header.
PUBLISHED_MTIME = {'train': 1504176606, 't10k': 1504176627}


@needs_debian
def test_debian_files_are_the_published_files_with_another_gzip_header():
    for name in MNIST_FILES:
        data = (DEBIAN / name).read_bytes()
        assert data[:4] == b'\x1f\x8b\x08\x00'                             # deflate, no file name stored
        # the published header: flag FNAME, the time stamp, extra flags 0, OS 3 (Unix), then the name and a zero byte
        header = b'\x1f\x8b\x08\x08' + struct.pack('<I', PUBLISHED_MTIME[name[:name.index('-')]]) + b'\x00\x03'
        published = header + name[:-3].encode() + b'\0' + data[10:]
        assert hashlib.md5(published).hexdigest() == README_MD5[name]
        assert sha256(published) == SOURCES['fashion-mnist'].files[name][0]
        assert sha256(gzip.decompress(data)) == SOURCES['fashion-mnist'].files[name][1]


@needs_debian
def test_load_fashion_mnist_from_the_debian_copy(cache):
    X_train, y_train, X_test, y_test = load_fashion_mnist(download=False)
    assert X_train.shape == (60000, 28, 28) and X_test.shape == (10000, 28, 28) and X_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    assert not cache.exists()                                              # nothing copied or downloaded
