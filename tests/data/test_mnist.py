"""Tests for pluglearn.data.mnist: download + cache + verify through a local HTTP server, the
restricted unpickler, and the IDX reader. Tiny files built in tmp_path cover the logic without
the reference data; the ../shared/data/mnist files, when present, check real MNIST facts."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from pluglearn.data.mnist import (
    ChecksumError,
    DataFormatError,
    DownloadError,
    default_cache_dir,
    load_mnist,
    read_idx,
    read_mnist_pickle,
)

SHARED_PKL, SHARED_PKL_MD5 = "mnist-t10k-split.pkl.gz", "52e4482baac41f9e35851bc9349dde5c"
SHARED_IDX_MD5 = {
    "t10k-images-idx3-ubyte.gz": "2c57910da66b1e3036e350d10c8c03e1",
    "t10k-labels-idx1-ubyte.gz": "cb1dbc8694c1ed44a28edef0c01aec2a",
}


# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test caches under tmp_path, never in the real ~/.cache."""
    monkeypatch.setenv("PLUGLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PLUGLEARN_MNIST_URL", raising=False)
    return tmp_path / "cache"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


class _Server:
    """An HTTP server on 127.0.0.1 (free port) in a thread; ``url`` ends with a slash."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # a short poll interval makes shutdown() return at once instead of after 0.5 s
        serve = functools.partial(self.httpd.serve_forever, poll_interval=0.01)
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    """``serve(directory)`` or ``serve(handler=...)`` starts a server, stopped at teardown."""
    servers: list[_Server] = []

    def start(directory: Path | None = None, handler: type | None = None) -> _Server:
        servers.append(_Server(handler or functools.partial(_Quiet, directory=str(directory))))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def _write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data += array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _write_idx_set(folder: Path, prefix: str, n: int, suffix: str = ".gz") -> None:
    x, y = _images(n, seed=n)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, 2051)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, 2049)


def _splits(sizes: tuple[int, ...] = (20, 5, 5)) -> tuple:
    out = []
    for i, n in enumerate(sizes):
        x, y = _images(n, seed=i)
        out.append((x.reshape(n, 784).astype(np.float32) / 255, y.astype(np.int64)))
    return tuple(out)


def _write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    data = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _assert_same(got: tuple, want: tuple) -> None:
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.dtype == torch.float32 and gy.dtype == torch.int64
        assert torch.equal(gx, torch.as_tensor(wx)) and torch.equal(gy, torch.as_tensor(wy))


# ----------------------------------------------------------------------------- download + cache


def test_download_verifies_caches_then_works_offline(tmp_path, serve, cache):
    want = _splits()
    md5 = _md5(_write_pickle(tmp_path / "mnist.pkl.gz", want))
    server = serve(tmp_path)
    _assert_same(load_mnist(server.url + "mnist.pkl.gz", md5=md5), want)
    [cached] = _files(cache)  # one verified file, no temporary leftovers
    assert cached.name == "mnist.pkl.gz" and _md5(cached) == md5
    server.stop()
    _assert_same(load_mnist(server.url + "mnist.pkl.gz", md5=md5, timeout=1), want)


def test_default_source_and_cache_come_from_env(tmp_path, serve, monkeypatch):
    _write_pickle(tmp_path / "mnist.pkl", _splits())
    monkeypatch.setenv("PLUGLEARN_MNIST_URL", serve(tmp_path).url + "mnist.pkl")
    assert load_mnist(cache_dir=tmp_path / "mine").train[0].shape == (20, 784)
    assert [p.name for p in _files(tmp_path / "mine")] == ["mnist.pkl"]


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PLUGLEARN_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "pluglearn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pluglearn"


def test_corrupt_download_is_refused_and_nothing_cached(tmp_path, serve, cache):
    path = _write_pickle(tmp_path / "mnist.pkl.gz", _splits())
    md5 = _md5(path)
    path.write_bytes(path.read_bytes()[:-9] + b"tampered!")
    with pytest.raises(ChecksumError, match=f"expected {md5}.*nothing was cached"):
        load_mnist(serve(tmp_path).url + "mnist.pkl.gz", md5=md5)
    assert _files(cache) == []


class _ShortBody(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)  # then the connection closes: a truncated download

    def log_message(self, *args: object) -> None:
        pass


def test_truncated_download_is_refused_and_nothing_cached(serve, cache):
    with pytest.raises(DownloadError, match=r"10 of 1000 bytes|IncompleteRead"):
        load_mnist(serve(handler=_ShortBody).url + "mnist.pkl.gz")
    assert _files(cache) == []


def test_unreachable_url_fails_fast_with_a_clear_message(cache):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mnist.pkl.gz"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        load_mnist(url, timeout=2)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert url in message and str(cache) in message and "PLUGLEARN_MNIST_URL" in message
    assert "pass its path to load_mnist()" in message
    assert _files(cache) == []


def test_silent_server_times_out_instead_of_hanging(cache):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        start = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            load_mnist(f"http://127.0.0.1:{s.getsockname()[1]}/m.pkl", timeout=0.3)
        assert time.monotonic() - start < 3
    assert _files(cache) == []


def test_http_error_is_reported(tmp_path, serve):
    with pytest.raises(DownloadError, match="HTTP 404"):
        load_mnist(serve(tmp_path).url + "missing.pkl.gz")


def test_corrupted_cache_entry_is_downloaded_again(tmp_path, serve, cache):
    want = _splits()
    md5 = _md5(_write_pickle(tmp_path / "mnist.pkl.gz", want))
    server = serve(tmp_path)
    url = server.url + "mnist.pkl.gz"
    load_mnist(url, md5=md5)
    [cached] = _files(cache)
    cached.write_bytes(b"rotten")
    with pytest.warns(UserWarning, match="fails its md5 check"):
        _assert_same(load_mnist(url, md5=md5), want)
    assert _md5(cached) == md5
    cached.write_bytes(b"rotten")
    server.stop()
    with pytest.warns(UserWarning), pytest.raises(DownloadError):
        load_mnist(url, md5=md5, timeout=1)
    assert _files(cache) == []  # the rotten file is not left to be trusted later


def test_idx_base_url_downloads_and_splits_in_file_order(tmp_path, serve, cache):
    _write_idx_set(tmp_path, "t10k", 40)
    md5s = {p.name: _md5(p) for p in tmp_path.iterdir()}
    server = serve(tmp_path)
    splits = load_mnist(server.url, md5=md5s, idx_sets=("t10k",))
    x, y = _images(40, seed=40)
    assert [len(s[0]) for s in splits] == [32, 4, 4]
    want = torch.from_numpy(x.reshape(40, 784)) / 255
    assert torch.equal(torch.cat([s[0] for s in splits]), want)
    assert torch.equal(torch.cat([s[1] for s in splits]), torch.from_numpy(y).long())
    server.stop()  # cached: no network needed; a base URL without the final slash works too
    again = load_mnist(server.url.rstrip("/"), idx_sets=("t10k",))
    assert torch.equal(again.test[0], splits.test[0])
    bad = dict(md5s, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(ChecksumError):
        load_mnist(tmp_path, md5=bad)


# ----------------------------------------------------------------------------- restricted unpickler


class _Payload:
    """Would create a marker file if unpickled by a plain unpickler: harmless if it ever ran."""

    def __init__(self, call: Callable[..., object], arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return self.call, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_crafted_pickle_does_not_run_code(tmp_path, kind):
    marker = tmp_path / "marker"
    payload = (
        _Payload(os.system, f"touch '{marker}'")
        if kind == "os.system"
        else _Payload(exec, f"open({str(marker)!r}, 'w').close()")
    )
    evil = _write_pickle(tmp_path / "evil.pkl.gz", ((payload, None), None, None))
    # protocol 2 renames builtins to __builtin__ for Python 2; either way it must be refused
    refused = f"{os.system.__module__}.system" if kind == "os.system" else "_*builtins?_*.exec"
    with pytest.raises(pickle.UnpicklingError, match=f"refused global {refused}"):
        load_mnist(evil)
    assert not marker.exists()


def test_only_latin1_codec_is_admitted(tmp_path):
    import codecs

    path = _write_pickle(tmp_path / "x.pkl", ((_Payload(codecs.encode, "x"), None),) * 3)
    with pytest.raises(pickle.UnpicklingError, match=r"refused _codecs\.encode"):
        read_mnist_pickle(path)  # the default encoding argument ("utf-8") is not latin-1


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_protocols_load(tmp_path, protocol):
    want = _splits()
    _assert_same(read_mnist_pickle(_write_pickle(tmp_path / "m.pkl", want, protocol)), want)


def test_numpy_1_pickle_names_load(tmp_path):
    # numpy 1.x pickles (like the classic mnist.pkl.gz) name numpy.core, not numpy._core;
    # protocol 2 writes globals as text lines, so renaming the module keeps the pickle valid.
    want = _splits()
    data = pickle.dumps(want, protocol=2)
    if b"numpy._core." in data:
        data = data.replace(b"numpy._core.", b"numpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    (tmp_path / "old.pkl").write_bytes(data)
    _assert_same(read_mnist_pickle(tmp_path / "old.pkl"), want)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"train": 1}, "expected \\(\\(train_x"),
        ((1, 2, 3), "train: expected an \\(x, y\\) pair"),
        (((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)),) * 3, r"\(n, 784\)"),
        (((np.full((2, 784), 2, np.float32), np.zeros(2, np.int64)),) * 3, r"\[0, 1\]"),
        (((np.zeros((2, 784), np.float32), np.zeros(3, np.int64)),) * 3, "2 integer labels"),
        (((np.zeros((2, 784), np.float32), np.full(2, 10)),) * 3, "0..9"),
    ],
)
def test_bad_pickle_layout_is_named(tmp_path, obj, match):
    with pytest.raises(DataFormatError, match=match):
        read_mnist_pickle(_write_pickle(tmp_path / "bad.pkl", obj))


@pytest.mark.parametrize("data", [b"", b"not a pickle", gzip.compress(b"\x80\x02(", mtime=0)[:-6]])
def test_unreadable_pickle_is_a_format_error(tmp_path, data):
    (tmp_path / "bad.pkl.gz").write_bytes(data)
    with pytest.raises(DataFormatError, match="not a readable MNIST pickle"):
        load_mnist(tmp_path / "bad.pkl.gz")


# ----------------------------------------------------------------------------- IDX


def test_idx_folder_with_train_uses_the_classic_split(tmp_path):
    _write_idx_set(tmp_path, "train", 12, suffix="")  # uncompressed files are read too
    _write_idx_set(tmp_path, "t10k", 5)
    splits = load_mnist(tmp_path)
    assert [len(s[1]) for s in splits] == [10, 2, 5]
    assert torch.equal(splits.valid[1], torch.tensor([0, 1]))  # train images 10 and 11


def test_idx_magic_and_truncation_errors(tmp_path):
    x, y = _images(3)
    images = _write_idx(tmp_path / "i.idx", x, 2051)
    assert read_idx(images, 2051).shape == (3, 28, 28)
    with pytest.raises(DataFormatError, match="magic number is 2051, expected 2049"):
        read_idx(images, 2049)
    (tmp_path / "cut").write_bytes(images.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut", 2051)
    (tmp_path / "long").write_bytes(images.read_bytes() + b"\0")
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        read_idx(tmp_path / "long", 2051)
    (tmp_path / "head").write_bytes(images.read_bytes()[:10])
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        read_idx(tmp_path / "head")
    (tmp_path / "gz").write_bytes(gzip.compress(images.read_bytes())[:-20])
    with pytest.raises(DataFormatError, match="could not be read or decompressed"):
        read_idx(tmp_path / "gz")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", y, 2049)  # labels under the images name
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y, 2049)
    with pytest.raises(DataFormatError, match="expected 2051 \\(images\\)"):
        load_mnist(tmp_path)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"source": "nowhere/mnist.pkl.gz"}, FileNotFoundError, "neither an http"),
        ({"source": "ftp://example.com/mnist.pkl.gz"}, ValueError, "unsupported URL scheme"),
        ({"timeout": 0}, ValueError, "timeout must be a positive"),
        ({"timeout": float("inf")}, ValueError, "finite"),
        ({"md5": "abc"}, ValueError, "32 hex digits"),
        ({"source": "http://127.0.0.1:9/", "idx_sets": "t10k"}, ValueError, "idx_sets"),
        ({"source": "http://127.0.0.1:9/", "md5": "0" * 32}, ValueError, "map file names"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_mnist(**{"source": "http://127.0.0.1:9/m.pkl", **kwargs})


def test_idx_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    _write_idx_set(tmp_path, "t10k", 5)
    with pytest.raises(ValueError, match=r"not read.*t10k-imgs"):
        load_mnist(tmp_path, md5={"t10k-imgs": "0" * 32})


# ----------------------------------------------------------------------------- reference MNIST


def _check_facts(splits: tuple) -> None:
    x = torch.cat([s[0] for s in splits])
    y = torch.cat([s[1] for s in splits])
    assert [len(s[0]) for s in splits] == [8000, 1000, 1000] and x.shape == (10000, 784)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    assert y[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(y).tolist() == counts
    assert abs(x.mean().item() - 0.13251) < 1e-4 and abs(x.std().item() - 0.31048) < 1e-4


def test_shared_pickle_download_and_cache(shared_mnist_dir, serve, cache):
    server = serve(shared_mnist_dir)
    splits = load_mnist(server.url + SHARED_PKL, md5=SHARED_PKL_MD5)
    _check_facts(splits)
    [cached] = _files(cache)
    assert _md5(cached) == SHARED_PKL_MD5
    server.stop()
    _assert_same(load_mnist(server.url + SHARED_PKL, md5=SHARED_PKL_MD5, timeout=1), splits)


def test_shared_idx_matches_the_pickle(shared_mnist_dir, serve):
    from_pickle = load_mnist(shared_mnist_dir / SHARED_PKL, md5=SHARED_PKL_MD5)
    _assert_same(load_mnist(shared_mnist_dir, md5=SHARED_IDX_MD5), from_pickle)
    url = serve(shared_mnist_dir).url
    _assert_same(load_mnist(url, md5=SHARED_IDX_MD5, idx_sets=("t10k",)), from_pickle)


def test_shared_tampered_copy_is_refused(shared_mnist_dir, tmp_path, serve, cache):
    data = bytearray((shared_mnist_dir / SHARED_PKL).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / SHARED_PKL).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=SHARED_PKL_MD5):
        load_mnist(serve(tmp_path).url + SHARED_PKL, md5=SHARED_PKL_MD5)
    assert _files(cache) == []


def test_mnist_available_only_without_a_download(tmp_path, monkeypatch):
    from urllib.parse import urlsplit

    from pluglearn.data.download import cache_path, file_name
    from pluglearn.data.mnist import DEFAULT_URL, URL_ENV, mnist_available

    monkeypatch.delenv(URL_ENV, raising=False)
    assert not mnist_available(cache_dir=tmp_path)  # empty cache, no configured source
    cached = cache_path(tmp_path, DEFAULT_URL) / file_name(urlsplit(DEFAULT_URL).path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert mnist_available(cache_dir=tmp_path)
    monkeypatch.setenv(URL_ENV, str(tmp_path / "missing.pkl.gz"))
    assert not mnist_available(cache_dir=tmp_path)
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/mnist.pkl.gz")
    assert mnist_available(cache_dir=tmp_path)
