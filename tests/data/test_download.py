"""Downloading and caching: the temporary file's place and name, a body without Content-Length, a
download that ends exactly at its deadline, the request's User-Agent, the reason given when a
connection is refused, the cache layout, safe file names, and the exact advice in the messages.

Oracles: what a local HTTP server saw or sent (recorded by the handler itself), hand-written
names and hashes, and the messages as documented, written out in full.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pluglearn.data.download import (
    ChecksumError,
    DownloadError,
    cache_path,
    fetch,
    file_name,
    resolve_deadline,
    verify,
)
from pluglearn.data.mnist import DataFormatError, load_mnist

BODY = bytes(range(256)) * 40  # 10,240 bytes
BODY_MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLUGLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLUGLEARN_MNIST_URL", raising=False)
    monkeypatch.delenv("PLUGLEARN_DOWNLOAD_DEADLINE", raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """``serve(respond)`` -> a URL on 127.0.0.1 whose GET requests ``respond(handler)`` answers."""
    servers = []

    def start(respond: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                respond(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads, server.block_on_close = True, False
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/files/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _send(handler: BaseHTTPRequestHandler, body: bytes, length: str | None) -> None:
    handler.send_response(200)
    if length is not None:
        handler.send_header("Content-Length", length)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)
    handler.close_connection = True


def test_the_partial_download_is_a_hidden_part_file_next_to_its_destination(serve, tmp_path):
    """Seen from the server while it sends: the temporary file already exists, in the
    destination's own folder (so os.replace is atomic), named ``.<name>.<random>.part``."""
    dest = tmp_path / "cache" / "sub" / "t10k-images.gz"
    seen: list[list[Path]] = []

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BODY)))
        handler.end_headers()
        handler.wfile.write(BODY[:100])
        handler.wfile.flush()
        seen.append(sorted(p for p in tmp_path.rglob("*") if p.is_file()))
        handler.wfile.write(BODY[100:])

    assert fetch(serve(respond) + "x", dest, BODY_MD5, timeout=5) == dest
    (during,) = seen
    assert len(during) == 1 and during[0].parent == dest.parent
    assert re.fullmatch(r"\.t10k-images\.gz\.[^.]+\.part", during[0].name), during[0].name
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [dest]
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("body", [BODY, b""], ids=["body", "empty"])
@pytest.mark.parametrize("length", [None, "garbled"], ids=["no-length", "garbled-length"])
def test_a_body_without_a_usable_length_is_read_to_its_end(serve, tmp_path, body, length):
    """No (or an unreadable) Content-Length: the size is unknown, the body is read until the
    server closes, and the md5 decides."""
    url = serve(lambda h: _send(h, body, length))
    dest = tmp_path / "cache" / "file.bin"
    assert fetch(url + "file.bin", dest, hashlib.md5(body).hexdigest(), timeout=5) == dest
    assert dest.read_bytes() == body


def test_a_download_whose_last_bytes_arrive_after_the_deadline_is_complete(serve, tmp_path):
    """The deadline stops a download that is still short of its Content-Length; one whose last
    read, although late, completed it is kept."""

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BODY)))
        handler.end_headers()
        handler.wfile.write(BODY[:-64])
        handler.wfile.flush()
        time.sleep(1.0)  # well past the 0.2 s deadline
        handler.wfile.write(BODY[-64:])  # the rest in one small write: one read

    dest = tmp_path / "cache" / "late.bin"
    assert fetch(serve(respond) + "late.bin", dest, BODY_MD5, timeout=5, deadline=0.2) == dest
    assert dest.read_bytes() == BODY


def test_a_deadline_without_a_content_length_reports_the_bytes_received(serve, tmp_path):
    def respond(handler):
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"x" * 10)
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up
            pass

    url = serve(respond) + "slow.bin"
    dest = tmp_path / "cache" / "slow.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, None, timeout=5, deadline=0.3)
    match = re.fullmatch(
        rf"download of {re.escape(url)} passed its 0\.3 s deadline with (\d+) bytes received: "
        rf"the server is too slow\. Nothing was cached at {re.escape(str(dest))}\. Retry later, "
        r"allow more time \(load_mnist\(deadline=\.\.\.\) or \$PLUGLEARN_DOWNLOAD_DEADLINE\), "
        r"or fetch the file elsewhere and pass its path to load_mnist\(\)\.",
        str(info.value),
    )
    assert match is not None, str(info.value)
    assert 0 < int(match.group(1)) < 1000
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_request_names_pluglearn_as_its_user_agent(serve, tmp_path):
    agents: list[str | None] = []

    def respond(handler):
        agents.append(handler.headers.get("User-Agent"))
        _send(handler, BODY, str(len(BODY)))

    fetch(serve(respond) + "a.bin", tmp_path / "cache" / "a.bin", BODY_MD5, timeout=5)
    assert agents == ["pluglearn"]


def test_a_refused_connection_gives_the_socket_error_as_the_reason(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    dest = tmp_path / "cache" / "x.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, None, timeout=5)
    text = str(info.value)
    # the reason is the socket error itself, not urllib's "<urlopen error ...>" wrapper of it
    assert text.startswith(f"could not download {url} ([Errno "), text
    assert "urlopen error" not in text and "Connection refused)" in text
    assert text.endswith(f"or place it at {dest}.")


def test_a_cached_file_that_fails_its_md5_warns_at_the_callers_line(serve, tmp_path):
    """The warning points past fetch(), at the code that called load_mnist."""
    url = serve(lambda h: _send(h, BODY, str(len(BODY)))) + "m.pkl"
    dest = cache_path(tmp_path / "cache", url) / "m.pkl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"rotten")
    warned = pytest.warns(UserWarning, match="fails its md5 check; downloading it again")
    with warned as record, pytest.raises(DataFormatError):  # BODY is no pickle: read fails
        load_mnist(url, md5=BODY_MD5, timeout=5)
    # stacklevel: not attributed to download.py itself (under mutmut the caller's frame is its
    # trampoline, so the exact file is not asserted)
    assert len(record) == 1 and Path(record[0].filename).name != "download.py"
    assert dest.read_bytes() == BODY


def test_verify_names_the_file_and_both_md5s_in_lower_case(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(BODY)
    wrong = "0123456789ABCDEF0123456789ABCDEF"
    with pytest.raises(ChecksumError) as info:
        verify(path, wrong)
    assert str(info.value) == (
        f"{path} has md5 {BODY_MD5}, expected {wrong.lower()}: the file is corrupt or another "
        "file; replace it, or pass the right md5= (or none)."
    )
    verify(path, BODY_MD5.upper())  # the md5 is compared without regard to case
    verify(path, None)


def test_a_bad_deadline_argument_is_quoted_as_given():
    with pytest.raises(ValueError) as info:
        resolve_deadline(-2.5)
    assert str(info.value) == (
        "deadline must be a positive, finite number of seconds for a whole download, got "
        "-2.5: e.g. 600."
    )
    assert resolve_deadline(7) == 7.0


def test_the_cache_has_one_folder_per_url_under_mnist():
    url = "https://example.org/data/mnist.pkl.gz"
    # sha256 of the URL, computed once by hand (sha256sum) and written out: its first 16 digits
    digest = "c8014398bd124030"
    assert hashlib.sha256(url.encode()).hexdigest()[:16] == digest
    assert cache_path(Path("/c"), url) == Path("/c/mnist") / digest


@pytest.mark.parametrize(
    ("url_path", "name"),
    [
        ("/data/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"),
        ("/data/Train%20Images.GZ", "Train_Images.GZ"),  # case kept, space made safe
        ("/a/b/c/d.pkl", "d.pkl"),  # the last segment only
        ("/data/..%2F..%2Fetc%2Fpasswd", "_.._etc_passwd"),  # no way out of the folder
        ("/data/.hidden", "hidden"),  # never a hidden file
        ("/data/X.gz", "X.gz"),
        ("/data/name.", "name."),  # only leading dots go
        ("/data/", "download"),
        ("", "download"),
        ("/data/...", "download"),
    ],
)
def test_file_names_are_the_last_segment_made_safe(url_path, name):
    assert file_name(url_path) == name
