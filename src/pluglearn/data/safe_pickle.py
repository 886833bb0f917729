"""Reading the classic notebook ``mnist.pkl.gz`` without letting the file run code.

The file is a (gzip'd) pickle of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``,
x float in [0, 1] shaped (n, 784), y integer labels. It is unpickled with a restricted unpickler
that only builds numpy arrays, so a crafted file cannot run code, and its decompressed size is
bounded (``max_bytes``, default :data:`~pluglearn.data.mnist_format.MAX_DECOMPRESSED_BYTES`), so a
small crafted file cannot fill the memory.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .mnist_format import (
    BoundedReader,
    DataFormatError,
    MnistSplits,
    Source,
    byte_limit,
    make_splits,
    open_maybe_gzip,
)

__all__ = ["read_mnist_pickle"]


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
def _reducer(reduced: str | tuple[Any, ...]) -> Any:
    # an ndarray reduces to (the function that rebuilds it, its arguments, ...), never a name
    assert isinstance(reduced, tuple)
    return reduced[0]


_RECONSTRUCT = _reducer(np.empty(1).__reduce__())
_FROMBUFFER = _reducer(np.empty(1).__reduce_ex__(5))
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


def read_mnist_pickle(path: Source, max_bytes: int | None = None) -> MnistSplits:
    """Read the (optionally gzip'd) notebook pickle safely; see the module docstring.

    ``max_bytes``: the most bytes the file may decompress to (None:
    :data:`~pluglearn.data.mnist_format.MAX_DECOMPRESSED_BYTES`); a file past it is refused
    after reading ``max_bytes + 1`` bytes.
    """
    path, limit = Path(path), byte_limit(max_bytes)
    try:
        with open_maybe_gzip(path) as f:
            bounded = BoundedReader(f, limit, path)
            splits = _ArrayOnlyUnpickler(bounded, encoding="latin1").load()
    except (_RefusedGlobal, DataFormatError):
        raise
    except Exception as error:  # an untrusted file can fail in any allowed constructor
        raise DataFormatError(f"{path} is not a readable MNIST pickle ({error!r})") from error
    if not (isinstance(splits, tuple | list) and len(splits) == 3):
        raise DataFormatError(
            f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x,"
            f" test_y)), got a {type(splits).__name__}"
        )
    return make_splits(splits, path)
