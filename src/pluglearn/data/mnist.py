"""MNIST: fetch it (download, cache, verify) and read it as torch tensors.

Two on-disk layouts are read:

* the classic ``mnist.pkl.gz`` of the notebooks: a (gzip'd) pickle of
  ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``, x float in [0, 1] shaped
  (n, 784), y integer labels. It is unpickled with a restricted unpickler that only builds numpy
  arrays, so a crafted file cannot run code.
* the IDX files as published (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``).

Downloads go through a temporary file that is checked (size, md5) before ``os.replace`` moves it
into the cache, so the cache never holds a partial or corrupt file.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

__all__ = [
    "DEFAULT_URL",
    "ChecksumError",
    "DataFormatError",
    "DownloadError",
    "MnistSplits",
    "default_cache_dir",
    "load_mnist",
    "read_idx",
    "read_mnist_pickle",
]

#: The URL the classic notebook downloads (50,000 / 10,000 / 10,000 images).
DEFAULT_URL = (
    "https://github.com/mnielsen/neural-networks-and-deep-learning/blob/master/data/mnist.pkl.gz"
    "?raw=true"
)
#: md5 of files at well-known URLs: the published checksum of the classic mnist.pkl.gz.
KNOWN_MD5 = {DEFAULT_URL: "a02cd19f81d51c426d7ca14024243ce9"}
URL_ENV = "PLUGLEARN_MNIST_URL"
CACHE_ENV = "PLUGLEARN_CACHE"
IDX_SETS = ("train", "t10k")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049

Pair = tuple[torch.Tensor, torch.Tensor]
Source = str | os.PathLike[str]


class DownloadError(ConnectionError):
    """The file could not be fetched (offline, refused, timed out, HTTP error, truncated)."""


class ChecksumError(ValueError):
    """A file's md5 is not the expected one; a download that fails it is never cached."""


class DataFormatError(ValueError):
    """A file is not a valid MNIST pickle or IDX file (bad magic, truncated, wrong shapes)."""


class MnistSplits(NamedTuple):
    """Three ``(x, y)`` pairs: x float32 (n, 784) in [0, 1], y int64 in 0..9."""

    train: Pair
    valid: Pair
    test: Pair


def default_cache_dir() -> Path:
    """``$PLUGLEARN_CACHE``, else ``$XDG_CACHE_HOME/pluglearn``, else ``~/.cache/pluglearn``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pluglearn"


def load_mnist(
    source: Source | None = None,
    *,
    cache_dir: Source | None = None,
    md5: str | Mapping[str, str] | None = None,
    timeout: float = 10.0,
    idx_sets: Sequence[str] = IDX_SETS,
) -> MnistSplits:
    """Load MNIST from a local file or folder, or from a URL through the cache.

    Args:
        source: a path to the pickle; a folder holding IDX files; an http(s) URL of the pickle
            (its path ends in ``.pkl`` or ``.pkl.gz``); or any other http(s) URL, taken as the
            base folder of the IDX files. Default: ``$PLUGLEARN_MNIST_URL`` or :data:`DEFAULT_URL`.
        cache_dir: where downloads are kept; default :func:`default_cache_dir`.
        md5: expected md5 of the pickle (a str), or of IDX files (a mapping file name -> md5).
            Downloads from :data:`KNOWN_MD5` URLs are checked even when it is None.
        timeout: seconds to wait for the server to connect or to send the next bytes.
        idx_sets: for an IDX base URL, which sets to download (``"t10k"`` is required).

    IDX splits: with the ``train`` files, train / valid are the first 5/6 and the last 1/6 of
    them (50,000 / 10,000, as in the classic pickle) and test is ``t10k``. With ``t10k`` only,
    its images are split in file order 80% / 10% / 10% (8,000 / 1,000 / 1,000): the layout of
    ``mnist-t10k-split.pkl.gz``. Use :func:`read_idx` for any other split.
    """
    # a finite timeout is what guarantees a dead or silent server cannot hang the caller
    is_number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not (is_number and 0 < timeout < float("inf")):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    if source is None:
        source = os.environ.get(URL_ENV) or DEFAULT_URL
    source = os.fspath(source)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    url = urllib.parse.urlsplit(source)
    if re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]+", url.scheme) and "://" in source:
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {source!r}: use http(s):// or a path")
        if _is_pickle_name(url.path):
            checksum = _str_md5(md5, source) or KNOWN_MD5.get(source)
            dest = _cache_path(cache, source) / _file_name(url.path)
            return read_mnist_pickle(_fetch(source, dest, checksum, timeout))
        sets = _check_sets(idx_sets)
        base = source if url.path.endswith("/") else source + "/"
        folder, md5s = _cache_path(cache, base), _map_md5(md5, source)
        for name in _idx_names(sets):
            _fetch(base + name, folder / name, md5s.get(name), timeout)
        return _read_idx_sets(folder, sets, md5s)
    path = Path(source).expanduser()
    if path.is_dir():
        sets = IDX_SETS if _find(path, "train-images-idx3-ubyte") else ("t10k",)
        return _read_idx_sets(path, sets, _map_md5(md5, source))
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST source {source!r} is neither an http(s) URL nor an existing file or folder:"
            f" pass the path of mnist.pkl.gz, a folder with the IDX files, or a URL"
        )
    _verify(path, _str_md5(md5, source))
    return read_mnist_pickle(path)


# ----------------------------------------------------------------------------- download + cache


def _fetch(url: str, dest: Path, md5: str | None, timeout: float) -> Path:
    """Return ``dest``, downloading ``url`` there first unless a verified copy is cached."""
    if dest.is_file():
        if md5 is None or _md5(dest) == md5.lower():
            return dest
        # A cached file that rotted on disk is repaired rather than trusted or left in the way.
        warnings.warn(f"cached {dest} fails its md5 check; downloading it again", stacklevel=3)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, expected = _download(url, out, timeout, dest)
            if expected is not None and size != expected:
                raise DownloadError(
                    f"download of {url} stopped after {size} of {expected} bytes; nothing was"
                    f" cached at {dest}. Retry, or pass a local copy to load_mnist()."
                )
            if md5 is not None and digest != md5.lower():
                raise ChecksumError(
                    f"{url} arrived with md5 {digest}, expected {md5.lower()}: the file is"
                    f" corrupt or not the expected one, so nothing was cached at {dest}. Retry,"
                    f" use another mirror, or pass the right md5= if the file changed on purpose."
                )
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _download(url: str, out: BinaryIO, timeout: float, dest: Path) -> tuple[str, int, int | None]:
    """Stream ``url`` into ``out``; return (md5 hex, bytes read, Content-Length or None)."""
    digest, size = hashlib.md5(usedforsecurity=False), 0
    request = urllib.request.Request(url, headers={"User-Agent": "pluglearn"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets
        reason = getattr(error, "reason", None) or error
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        raise DownloadError(
            f"could not download {url} ({reason}). Nothing was cached at {dest}. To work"
            f" offline, fetch the file elsewhere and pass its path to load_mnist() (or set"
            f" {URL_ENV} to that path or to a reachable mirror), or place it at {dest}."
        ) from error
    return digest.hexdigest(), size, int(length) if length and length.isdigit() else None


def _cache_path(cache: Path, url: str) -> Path:
    """One folder per URL, so two sources with the same file name never share a cache entry."""
    return cache / "mnist" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _file_name(url_path: str) -> str:
    """A safe local file name from the last segment of a URL path."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(url_path.rsplit("/", 1)[-1]))
    return name.lstrip(".") or "download"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, md5: str | None) -> None:
    if md5 is not None and (got := _md5(path)) != md5.lower():
        raise ChecksumError(
            f"{path} has md5 {got}, expected {md5.lower()}: the file is corrupt or another"
            f" file; replace it, or pass the right md5= (or none)."
        )


def _str_md5(md5: object, source: str) -> str | None:
    if md5 is None or (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
        return md5
    raise ValueError(f"md5 for {source!r} must be 32 hex digits or None, got {md5!r}")


def _map_md5(md5: object, source: str) -> dict[str, str]:
    if not isinstance(md5, Mapping | None):
        raise ValueError(
            f"{source!r} is read as IDX files, so md5 must map file names to md5s,"
            f" e.g. {{'t10k-images-idx3-ubyte.gz': '...'}}, got {md5!r}"
        )
    return {name: value for name, value in (md5 or {}).items() if _str_md5(value, name)}


def _is_pickle_name(url_path: str) -> bool:
    return url_path.lower().endswith((".pkl", ".pkl.gz", ".pickle", ".pickle.gz"))


# ----------------------------------------------------------------------------- pickle reading


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 stores bytes in protocol-2 pickles as _codecs.encode(text, "latin1"); only that
    # use is admitted, so no other codec (rot13, hex, ...) can be reached through the pickle.
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise _RefusedGlobal(f"refused _codecs.encode with encoding {encoding!r}: not MNIST")
    return text.encode("latin-1")


class _RefusedGlobal(pickle.UnpicklingError):
    """Raised for a global outside ``_ALLOWED``; kept apart from plain corruption."""


# numpy >= 2 pickles name numpy._core, older ones numpy.core; both mean the same functions:
# _reconstruct (protocols <= 4) and _frombuffer (protocol 5), taken from numpy itself.
_RECONSTRUCT, _FROMBUFFER = np.empty(1).__reduce__()[0], np.empty(1).__reduce_ex__(5)[0]
_ALLOWED = {
    (f"numpy.{core}.{module}", f.__name__): f
    for core in ("core", "_core")
    for module, f in (("multiarray", _RECONSTRUCT), ("numeric", _FROMBUFFER))
} | {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits only the globals numpy arrays need; any other global is refused, never imported."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"refused global {module}.{name}: an MNIST pickle holds only numpy arrays, so"
                f" this file is not one (or was tampered with). Use a trusted mnist.pkl.gz."
            ) from None


def read_mnist_pickle(path: Source) -> MnistSplits:
    """Read the (optionally gzip'd) notebook pickle safely; see the module docstring."""
    path = Path(path)
    try:
        with _open(path) as f:
            splits = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal:
        raise
    except Exception as error:  # an untrusted file can fail in any allowed constructor
        raise DataFormatError(f"{path} is not a readable MNIST pickle ({error!r})") from error
    if not (isinstance(splits, tuple | list) and len(splits) == 3):
        raise DataFormatError(
            f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x,"
            f" test_y)), got a {type(splits).__name__}"
        )
    return _splits(splits, path)


def _splits(parts: Sequence[object], where: Path) -> MnistSplits:
    names = MnistSplits._fields
    return MnistSplits(*(_pair(p, f"{where} {n}") for p, n in zip(parts, names, strict=True)))


def _pair(split: object, what: str) -> Pair:
    if not (isinstance(split, tuple | list) and len(split) == 2):
        raise DataFormatError(f"{what}: expected an (x, y) pair")
    x, y = split
    if not (
        isinstance(x, np.ndarray)
        and x.ndim == 2
        and x.shape[1] == 784
        and np.issubdtype(x.dtype, np.floating)
    ):
        raise DataFormatError(
            f"{what}: x must be a float array shaped (n, 784), got "
            f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise DataFormatError(f"{what}: pixel values must lie in [0, 1]")
    return _tensor(x, np.float32), _labels(y, len(x), what)


def _labels(y: object, n: int, what: str) -> torch.Tensor:
    if not (isinstance(y, np.ndarray) and y.shape == (n,) and np.issubdtype(y.dtype, np.integer)):
        raise DataFormatError(
            f"{what}: y must be {n} integer labels, got "
            f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}"
        )
    if y.size and not (y.min() >= 0 and y.max() <= 9):
        raise DataFormatError(f"{what}: labels must lie in 0..9")
    return _tensor(y, np.int64)


def _tensor(a: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    a = np.ascontiguousarray(a, dtype=dtype)
    # arrays over a pickle's or file's bytes are read-only; torch tensors must own writable memory
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _open(path: Path) -> BinaryIO:
    """Open a file, decompressing it when it starts with the gzip magic bytes."""
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")  # type: ignore[return-value]


# ----------------------------------------------------------------------------- IDX reading


def read_idx(path: Source, magic: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip'd or not) as a uint8 array shaped by its header.

    ``magic`` (2051 images, 2049 labels) is checked when given.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as error:
        raise DataFormatError(f"{path} could not be read or decompressed ({error!r})") from error
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is None or (magic is not None and found != magic) or found >> 8 != 0x08:
        want = (
            f"{magic} ({'images' if magic == IMAGES_MAGIC else 'labels'})"
            if magic
            else "0x08nn (unsigned bytes)"
        )
        raise DataFormatError(
            f"{path}: IDX magic number is {found}, expected {want}; is this the"
            f" right file, and is it complete?"
        )
    ndim, header = found & 0xFF, 4 + 4 * (found & 0xFF)
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header; download the file again")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if (size := int(np.prod(dims))) != len(data) - header:
        raise DataFormatError(
            f"{path}: header promises {dims} = {size} bytes but the file has"
            f" {len(data) - header}: truncated or corrupt; download it again"
        )
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _idx_names(sets: Sequence[str]) -> list[str]:
    return [f"{s}-{k}-ubyte.gz" for s in sets for k in ("images-idx3", "labels-idx1")]


def _check_sets(sets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sets, str) or "t10k" not in sets or not set(sets) <= set(IDX_SETS):
        raise ValueError(f"idx_sets must be ('t10k',) or ('train', 't10k'), got {sets!r}")
    return tuple(s for s in IDX_SETS if s in sets)


def _read_idx_sets(folder: Path, sets: Sequence[str], md5s: Mapping[str, str]) -> MnistSplits:
    pairs, used = {}, set()
    for s in sets:
        paths = [_find(folder, f"{s}-{k}-ubyte") for k in ("images-idx3", "labels-idx1")]
        if None in paths:
            raise FileNotFoundError(
                f"{folder} lacks {s}-images-idx3-ubyte[.gz] or"
                f" {s}-labels-idx1-ubyte[.gz]; put both IDX files there"
            )
        for p in paths:
            _verify(p, md5s.get(p.name))
            used.add(p.name)
        images, labels = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataFormatError(
                f"{folder}: {s} images {images.shape} and labels {labels.shape}"
                f" do not make n 28x28 images with n labels"
            )
        pairs[s] = (images.reshape(len(images), 784).astype(np.float32) / 255, labels)
    if unknown := set(md5s) - used:
        raise ValueError(f"md5 names files that were not read: {sorted(unknown)}; check spelling")
    x, y = pairs["t10k"]
    if "train" in pairs:
        tx, ty = pairs["train"]
        cut = len(tx) - len(tx) // 6
        parts = [(tx[:cut], ty[:cut]), (tx[cut:], ty[cut:]), (x, y)]
    else:
        a, b = len(x) - 2 * (len(x) // 10), len(x) - len(x) // 10
        parts = [(x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])]
    return _splits(parts, folder)
