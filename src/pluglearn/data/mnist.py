"""MNIST: fetch it (download, cache, verify) and read it as torch tensors.

Two on-disk layouts are read:

* the classic ``mnist.pkl.gz`` of the notebooks: a (gzip'd) pickle of
  ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``, x float in [0, 1] shaped
  (n, 784), y integer labels. It is unpickled with a restricted unpickler that only builds numpy
  arrays, so a crafted file cannot run code.
* the IDX files as published (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``).

Downloads go through a temporary file that is checked (size, md5) before ``os.replace`` moves it
into the cache, so the cache never holds a partial or corrupt file; a download has a deadline
as a whole, beside the timeout for each wait. Reading never decompresses more than a file may
hold (an IDX header's promise + 1 byte; for the pickle ``MAX_DECOMPRESSED_BYTES``, 1 GiB).

This module ties the pieces together (:func:`load_mnist`) and re-exports their public names:
:mod:`~pluglearn.data.download` (fetch, cache, md5), :mod:`~pluglearn.data.safe_pickle` (the
pickle), :mod:`~pluglearn.data.idx` (IDX files) and :mod:`~pluglearn.data.mnist_format`
(:class:`MnistSplits`, :class:`DataFormatError`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

# CACHE_ENV, IMAGES_MAGIC and LABELS_MAGIC are imported only to stay importable from here
from .download import CACHE_ENV as CACHE_ENV
from .download import (
    URL_ENV,
    ChecksumError,
    DownloadError,
    cache_path,
    default_cache_dir,
    fetch,
    file_name,
    resolve_deadline,
    verify,
)
from .idx import (
    IDX_SETS,
    check_sets,
    find_idx,
    idx_names,
    read_idx,
    read_idx_sets,
)
from .idx import IMAGES_MAGIC as IMAGES_MAGIC
from .idx import LABELS_MAGIC as LABELS_MAGIC
from .mnist_format import DataFormatError, MnistSplits, Source
from .safe_pickle import read_mnist_pickle

__all__ = [
    "DEFAULT_URL",
    "ChecksumError",
    "DataFormatError",
    "DownloadError",
    "MnistSplits",
    "default_cache_dir",
    "load_mnist",
    "mnist_available",
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


def load_mnist(
    source: Source | None = None,
    *,
    cache_dir: Source | None = None,
    md5: str | Mapping[str, str] | None = None,
    timeout: float = 10.0,
    idx_sets: Sequence[str] = IDX_SETS,
    deadline: float | None = None,
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
        deadline: seconds a whole download may take (a server that trickles bytes is stopped,
            and reported with the bytes received). Default: ``$PLUGLEARN_DOWNLOAD_DEADLINE``,
            else 600.
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
    if deadline is not None:  # None: fetch reads $PLUGLEARN_DOWNLOAD_DEADLINE when it downloads
        deadline = resolve_deadline(deadline)
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
            dest = cache_path(cache, source) / file_name(url.path)
            return read_mnist_pickle(fetch(source, dest, checksum, timeout, deadline))
        sets = check_sets(idx_sets)
        base = source if url.path.endswith("/") else source + "/"
        folder, md5s = cache_path(cache, base), _map_md5(md5, source)
        for name in idx_names(sets):
            fetch(base + name, folder / name, md5s.get(name), timeout, deadline)
        return read_idx_sets(folder, sets, md5s)
    path = Path(source).expanduser()
    if path.is_dir():
        sets = IDX_SETS if find_idx(path, "train-images-idx3-ubyte") else ("t10k",)
        return read_idx_sets(path, sets, _map_md5(md5, source))
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST source {source!r} is neither an http(s) URL nor an existing file or folder:"
            f" pass the path of mnist.pkl.gz, a folder with the IDX files, or a URL"
        )
    verify(path, _str_md5(md5, source))
    return read_mnist_pickle(path)


def mnist_available(cache_dir: Source | None = None) -> bool:
    """True when :func:`load_mnist` with no source can work without asking for a download:
    ``$PLUGLEARN_MNIST_URL`` names something (a path that exists, or a URL the user chose), or
    the default URL's file is already in the cache."""
    configured = os.environ.get(URL_ENV)
    if configured:
        return "://" in configured or Path(configured).expanduser().exists()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    url = urllib.parse.urlsplit(DEFAULT_URL)
    return (cache_path(cache, DEFAULT_URL) / file_name(url.path)).is_file()


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
