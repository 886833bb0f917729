"""Limits on what reading and downloading MNIST may cost: a small crafted file that decompresses
to far more than it may hold is refused without being read whole, and a server that trickles
bytes is stopped by the download's deadline."""

from __future__ import annotations

import gzip
import pickle
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pluglearn.data import mnist_format
from pluglearn.data.mnist import DataFormatError, DownloadError, load_mnist, read_mnist_pickle

BIG = 64 << 20  # what the crafted streams decompress to
SMALL_PEAK = 8 << 20  # far below BIG: the stream was not read whole


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test caches under tmp_path; no deadline comes from the environment."""
    monkeypatch.setenv("PLUGLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLUGLEARN_MNIST_URL", raising=False)
    monkeypatch.delenv("PLUGLEARN_DOWNLOAD_DEADLINE", raising=False)
    return tmp_path / "cache"


def _gzip_file(path: Path, head: bytes, filler: bytes, total: int) -> Path:
    """A gzip file of ``head`` then ``filler`` repeated to ``total`` bytes, written in pieces
    (the test never holds the big stream itself)."""
    squash = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    piece = filler * ((1 << 20) // len(filler))
    with path.open("wb") as f:
        f.write(squash.compress(head))
        for _ in range((total - len(head)) // len(piece)):
            f.write(squash.compress(piece))
        f.write(squash.flush())
    return path


def _peak_while(call) -> tuple[BaseException, int]:
    """The error ``call()`` raises and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        call()
    except Exception as error:  # returned for the test to check
        raised = error
    else:
        raise AssertionError("the crafted file was accepted")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def _idx_header(magic: int, *dims: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in (magic, *dims))


def _labels_file(folder: Path, n: int) -> None:
    data = _idx_header(2049, n) + bytes(range(n))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(data))


# ----------------------------------------------------------------------------- decompression


def test_an_idx_bomb_is_refused_after_the_bytes_its_header_promises(tmp_path):
    # 10 images promised (7,840 bytes), 64 MB of zeros inside a gzip of about 64 KB
    _gzip_file(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_header(2051, 10, 28, 28), b"\0", BIG)
    _labels_file(tmp_path, 10)
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").stat().st_size < 1 << 20
    error, peak = _peak_while(lambda: load_mnist(tmp_path))
    assert isinstance(error, DataFormatError)
    assert "header promises (10, 28, 28) = 7840 bytes but the file has more" in str(error)
    assert peak < SMALL_PEAK


def test_an_idx_header_promising_too_much_is_refused_before_reading(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_header(2051, 1 << 30, 28, 28) + bytes(784))
    _labels_file(tmp_path, 1)
    error, peak = _peak_while(lambda: load_mnist(tmp_path))
    assert isinstance(error, DataFormatError)
    assert "more than max_bytes=1073741824" in str(error) and "max_bytes=" in str(error)
    assert peak < SMALL_PEAK


def _pickle_bomb(path: Path) -> Path:
    # valid opcodes all the way (EMPTY_TUPLE, POP), 64 MB of them, and never a STOP
    return _gzip_file(path, pickle.PROTO + b"\x02", b")0", BIG)


@pytest.mark.slow
def test_a_pickle_bomb_is_refused_after_max_bytes(tmp_path):
    path = _pickle_bomb(tmp_path / "mnist.pkl.gz")
    error, peak = _peak_while(lambda: read_mnist_pickle(path, max_bytes=1 << 18))
    assert isinstance(error, DataFormatError)
    assert f"{path} decompresses to more than 262144 bytes" in str(error)
    assert "max_bytes=" in str(error)
    assert peak < SMALL_PEAK


@pytest.mark.slow
def test_load_mnist_bounds_a_pickle_by_the_documented_maximum(tmp_path, monkeypatch):
    path = _pickle_bomb(tmp_path / "mnist.pkl.gz")
    monkeypatch.setattr(mnist_format, "MAX_DECOMPRESSED_BYTES", 1 << 18)
    with pytest.raises(DataFormatError, match="decompresses to more than 262144 bytes"):
        load_mnist(path)


def test_a_genuine_pickle_just_under_the_limit_loads(tmp_path):
    rng = np.random.default_rng(0)
    split = (rng.random((20, 784), dtype=np.float32), rng.integers(0, 10, 20))
    data = pickle.dumps((split, split, split), protocol=2)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(data))
    assert len(read_mnist_pickle(path, max_bytes=len(data)).train[1]) == 20
    with pytest.raises(DataFormatError, match=f"more than {len(data) - 1} bytes"):
        read_mnist_pickle(path, max_bytes=len(data) - 1)


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True])
def test_a_bad_max_bytes_is_named(tmp_path, max_bytes):
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        read_mnist_pickle(tmp_path / "absent.pkl", max_bytes=max_bytes)


# ----------------------------------------------------------------------------- download deadline


class _Trickle(BaseHTTPRequestHandler):
    """Promises 10,000 bytes, then sends one every 0.05 s (at most 200: 10 s)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickle_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads, server.block_on_close = True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist.pkl.gz"
    finally:
        server.shutdown()
        server.server_close()


def _assert_deadline_error(error: DownloadError, url: str, cache: Path) -> None:
    text = str(error)
    assert url in text and "0.5 s deadline" in text
    received = int(text.split(" deadline with ")[1].split(" of ")[0])
    assert 0 < received < 10000
    assert "of 10000 bytes received" in text and "PLUGLEARN_DOWNLOAD_DEADLINE" in text
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing cached, no temporary


def test_a_trickling_server_is_stopped_by_the_deadline(trickle_url, cache):
    with pytest.raises(DownloadError) as info:
        load_mnist(trickle_url, timeout=5, deadline=0.5)
    _assert_deadline_error(info.value, trickle_url, cache)


def test_the_deadline_comes_from_the_environment(trickle_url, cache, monkeypatch):
    monkeypatch.setenv("PLUGLEARN_DOWNLOAD_DEADLINE", "0.5")
    with pytest.raises(DownloadError) as info:
        load_mnist(trickle_url, timeout=5)
    _assert_deadline_error(info.value, trickle_url, cache)


@pytest.mark.parametrize(
    ("deadline", "env", "match"),
    [
        (0, None, "deadline must be a positive, finite number"),
        (float("inf"), None, "deadline must be a positive, finite number"),
        (None, "soon", r"\$PLUGLEARN_DOWNLOAD_DEADLINE must be a positive.*'soon'"),
    ],
)
def test_a_bad_deadline_is_named(trickle_url, monkeypatch, deadline, env, match):
    if env is not None:
        monkeypatch.setenv("PLUGLEARN_DOWNLOAD_DEADLINE", env)
    with pytest.raises(ValueError, match=match):
        load_mnist(trickle_url, timeout=5, deadline=deadline)
