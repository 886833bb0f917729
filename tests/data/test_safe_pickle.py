"""The restricted MNIST unpickler against a catalogue of dangerous globals, built opcode by opcode.

Each payload names one global that executes, imports, opens, deletes or allocates, and calls it
(``REDUCE``, or ``INST`` for protocol 0) with arguments aimed at ``tmp_path``. The oracle is
independent of the unpickler: the same bytes given to the plain ``pickle.loads`` do create the
marker file (so each payload is live), while ``read_mnist_pickle`` must refuse it with its own
error naming the global, and leave ``tmp_path`` exactly as it was.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from pluglearn.data.mnist import DataFormatError, read_mnist_pickle

# ----------------------------------------------------------------------------- opcode builder


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data  # BINBYTES


def _int(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1: any size


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _list(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"  # MARK ... LIST


EMPTY_DICT = b"}"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL (protocols 0-3)


def _stack_global(module: str, name: str) -> bytes:
    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text.encode())]) + text.encode()  # SHORT_BINUNICODE

    return short(module) + short(name) + b"\x93"  # STACK_GLOBAL (protocol 4+)


def call(module: str, name: str, args: tuple[bytes, ...], form: str = "GLOBAL") -> bytes:
    """The opcodes of ``module.name(*args)``: GLOBAL or STACK_GLOBAL + REDUCE, or INST."""
    if form == "INST":
        return b"(" + b"".join(args) + b"i" + module.encode() + b"\n" + name.encode() + b"\n"
    find = _global if form == "GLOBAL" else _stack_global
    return find(module, name) + _tuple(*args) + b"R"


def as_mnist_file(path: Path, payload: bytes, protocol: int = 2) -> Path:
    """The payload where an MNIST pickle has its first training array."""
    body = _tuple(_tuple(payload, b"N"), b"N", b"N")
    path.write_bytes(b"\x80" + bytes([protocol]) + body + b".")
    return path


# ----------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Target:
    """Where the payloads aim, all inside ``tmp_path``."""

    root: Path

    @property
    def marker(self) -> str:  # a payload that runs creates this file
        return str(self.root / "marker")

    @property
    def victim_file(self) -> str:
        return str(self.root / "victim.bin")

    @property
    def victim_dir(self) -> str:
        return str(self.root / "victim_dir")

    @property
    def module(self) -> str:  # importing it creates the marker
        return "pluglearn_evil_import_probe"

    @property
    def script(self) -> str:
        return str(self.root / "evil_script.py")

    @property
    def code(self) -> str:
        return f"open({self.marker!r}, 'w').close()"

    def prepare(self) -> None:
        (self.root / "victim.bin").write_bytes(b"\x00" * 16)
        (self.root / "victim_dir").mkdir()
        (self.root / "victim_dir" / "keep.txt").write_text("keep")
        (self.root / f"{self.module}.py").write_text(self.code + "\n")
        Path(self.script).write_text(self.code + "\n")


@dataclass(frozen=True)
class Dangerous:
    module: str
    name: str
    args: Callable[[Target], tuple[bytes, ...]]
    live: bool = True  # with a plain unpickler, the payload visibly changes tmp_path

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


def _touch(t: Target) -> tuple[bytes, ...]:
    return (_str(f"touch '{t.marker}'"),)


def _argv(t: Target) -> tuple[bytes, ...]:
    return (_list(_str("touch"), _str(t.marker)),)


def _code(t: Target) -> tuple[bytes, ...]:
    return (_str(t.code),)


def _open_w(t: Target) -> tuple[bytes, ...]:
    return _str(t.marker), _str("w")


def _inner_pickle(t: Target) -> tuple[bytes, ...]:
    return (_bytes(b"\x80\x02" + call("os", "system", _touch(t)) + b"."),)


CATALOGUE = [
    # run a shell command or a program
    Dangerous("os", "system", _touch),
    Dangerous(os.system.__module__, "system", _touch),  # posix.system on Linux
    Dangerous("os", "popen", _touch, live=False),  # asynchronous: not waited for
    Dangerous("subprocess", "Popen", _argv, live=False),  # asynchronous
    Dangerous("subprocess", "run", _argv),
    Dangerous("subprocess", "check_output", _argv),
    Dangerous("subprocess", "getoutput", _touch),
    # evaluate or execute a string
    Dangerous("builtins", "eval", _code),
    Dangerous("builtins", "exec", _code),
    Dangerous("__builtin__", "eval", _code),  # the Python 2 name protocol 2 pickles carry
    Dangerous("numpy.testing", "runstring", lambda t: (_str(t.code), EMPTY_DICT)),
    Dangerous("numpy.testing._private.utils", "runstring", lambda t: (_str(t.code), EMPTY_DICT)),
    Dangerous("numpy.testing", "measure", lambda t: (_str(t.code), _int(1))),
    Dangerous("runpy", "run_path", lambda t: (_str(t.script),)),
    Dangerous("pickle", "loads", _inner_pickle),
    Dangerous("_pickle", "loads", _inner_pickle),
    # import a module (running its top level)
    Dangerous("builtins", "__import__", lambda t: (_str(t.module),)),
    Dangerous("importlib", "import_module", lambda t: (_str(t.module),)),
    # open, write or delete files
    Dangerous("builtins", "open", _open_w),
    Dangerous("io", "open", _open_w),
    Dangerous("shutil", "rmtree", lambda t: (_str(t.victim_dir),)),
    Dangerous("os", "remove", lambda t: (_str(t.victim_file),)),
    Dangerous(
        "numpy", "memmap", lambda t: (_str(t.marker), _str("uint8"), _str("w+"), _int(0), _int(16))
    ),
    Dangerous("numpy", "save", lambda t: (_str(t.marker + ".npy"), _int(1))),
    Dangerous("numpy", "savetxt", lambda t: (_str(t.marker), _list(_int(1), _int(2)))),
    Dangerous("numpy", "fromfile", lambda t: (_str(t.victim_file),), live=False),  # reads
    Dangerous("numpy", "load", lambda t: (_str(t.victim_file),), live=False),  # reads
    Dangerous("numpy", "loadtxt", lambda t: (_str(t.victim_file),), live=False),
    # load native code, reach attributes, allocate
    Dangerous("numpy.ctypeslib", "load_library", lambda t: (_str("libc"), _str("/")), live=False),
    Dangerous("numpy.f2py", "run_main", lambda t: (_list(_str("--help")),), live=False),
    Dangerous("ctypes", "CDLL", lambda t: (_str("libc.so.6"),), live=False),
    Dangerous("builtins", "getattr", lambda t: (_str("x"), _str("upper")), live=False),
    Dangerous("operator", "attrgetter", lambda t: (_str("system"),), live=False),
    Dangerous("functools", "partial", lambda t: (_str("x"),), live=False),
    Dangerous("numpy", "empty", lambda t: (_tuple(_int(2**40)),), live=False),  # 8 TB
    # dotted names reach attributes in protocol 4; an allowed module must not open that door
    Dangerous("numpy", "ndarray.tofile", lambda t: (_str(t.marker),), live=False),
    Dangerous("numpy.core.multiarray", "_reconstruct.__globals__", lambda t: (), live=False),
    Dangerous("numpy._core.numeric", "_frombuffer.__builtins__", lambda t: (), live=False),
]
FORMS = ["GLOBAL", "STACK_GLOBAL", "INST"]


def _state(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content: what a payload could change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Target:
    t = Target(tmp_path / "target")
    t.root.mkdir()
    t.prepare()
    monkeypatch.syspath_prepend(str(t.root))
    yield t
    sys.modules.pop(t.module, None)


def test_the_catalogue_is_large_and_names_real_callables():
    assert len({str(d) for d in CATALOGUE}) == len(CATALOGUE) >= 30
    import importlib

    for d in CATALOGUE:
        if "." in d.name or d.module == "__builtin__":
            continue
        module = importlib.import_module(d.module)
        assert callable(getattr(module, d.name)), d


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("danger", CATALOGUE, ids=str)
def test_a_dangerous_global_is_refused_before_it_runs(tmp_path, target, danger, form):
    path = as_mnist_file(
        tmp_path / "evil.pkl", call(danger.module, danger.name, danger.args(target), form)
    )
    before = _state(target.root)
    refused = rf"refused global {re.escape(danger.module)}\.{re.escape(danger.name)}:"
    with pytest.raises(pickle.UnpicklingError, match=refused) as caught:
        read_mnist_pickle(path)
    assert not isinstance(caught.value, DataFormatError)  # refused, not merely unreadable
    assert _state(target.root) == before
    assert target.module not in sys.modules


@pytest.mark.parametrize("danger", [d for d in CATALOGUE if d.live], ids=str)
def test_each_live_payload_does_run_under_a_plain_unpickler(tmp_path, target, danger):
    """The catalogue's proof: these very bytes, unrestricted, change tmp_path."""
    path = as_mnist_file(
        tmp_path / "evil.pkl", call(danger.module, danger.name, danger.args(target))
    )
    before = _state(target.root)
    pickle.loads(path.read_bytes())  # the payload's own call may return anything
    assert _state(target.root) != before or target.module in sys.modules


def test_a_refused_global_inside_a_valid_file_still_stops_the_load(tmp_path, target):
    """A real array first, the payload after it: the load stops at the payload."""
    x = np.zeros((2, 784), np.float32)
    good = pickle.dumps(x, protocol=2)[2:-1]  # the array's opcodes without PROTO and STOP
    body = _tuple(_tuple(good, call("os", "system", _touch(target))), b"N", b"N")
    (tmp_path / "mixed.pkl").write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(pickle.UnpicklingError, match=r"refused global os\.system"):
        read_mnist_pickle(tmp_path / "mixed.pkl")
    assert not Path(target.marker).exists()


# ----------------------------------------------------------------------------- what stays allowed


def _tiny_splits() -> tuple:
    rng = np.random.default_rng(0)
    return tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64))
        for n in (6, 3, 2)
    )


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_numpy_reconstruction_globals_still_load_real_arrays(tmp_path, protocol, core):
    want = _tiny_splits()
    data = pickle.dumps(want, protocol=protocol)
    if protocol <= 3:  # text GLOBALs: write them under both numpy 1 and numpy 2 names
        data = re.sub(rb"numpy\._?core\.", core.encode() + b".", data)
    (tmp_path / "m.pkl").write_bytes(data)
    got = read_mnist_pickle(tmp_path / "m.pkl")
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.dtype == torch.float32 and gy.dtype == torch.int64
        assert torch.equal(gx, torch.from_numpy(wx)) and torch.equal(gy, torch.from_numpy(wy))


def test_the_allowed_globals_are_exactly_what_numpy_arrays_need(tmp_path):
    """Each allowed name, given the wrong arguments, fails as a format error (it was admitted),
    while a sibling of it in the same module is refused."""
    for module, name in [("numpy", "dtype"), ("numpy", "ndarray")]:
        path = as_mnist_file(tmp_path / "p.pkl", call(module, name, (_str("no such dtype"),)))
        with pytest.raises(DataFormatError, match="not a readable MNIST pickle"):
            read_mnist_pickle(path)
    for module, name in [("numpy", "array"), ("numpy.core.multiarray", "scalar")]:
        path = as_mnist_file(tmp_path / "p.pkl", call(module, name, (_int(1),)))
        with pytest.raises(pickle.UnpicklingError, match=f"refused global {module}.{name}"):
            read_mnist_pickle(path)


# ----------------------------------------------------------------------------- codecs, layout, size


@pytest.mark.parametrize("encoding", ["latin1", "latin-1", "Latin_1", "iso-8859-1", "ISO_8859_1"])
def test_every_spelling_of_latin1_is_admitted_for_codecs_encode(tmp_path, encoding):
    """Python 3 writes bytes as ``_codecs.encode(text, "latin1")``; codec names ignore case,
    dashes and underscores, so each spelling must give the same bytes."""
    text = "".join(map(chr, range(256)))
    payload = call("_codecs", "encode", (_str(text), _str(encoding)))
    data = b"\x80\x02" + _tuple(_tuple(payload, b"N"), b"N", b"N") + b"."
    (tmp_path / "p.pkl").write_bytes(data)
    with pytest.raises(DataFormatError, match=r"train: x must be a float array"):
        read_mnist_pickle(tmp_path / "p.pkl")  # admitted: it fails on the layout, later
    assert pickle.loads(data)[0][0] == bytes(range(256))


@pytest.mark.parametrize("encoding", ["utf-8", "utf_16", "rot13", "hex", "latin2"])
def test_other_codecs_are_refused(tmp_path, encoding):
    payload = call("_codecs", "encode", (_str("x"), _str(encoding)))
    path = as_mnist_file(tmp_path / "p.pkl", payload)
    with pytest.raises(pickle.UnpicklingError, match=rf"refused _codecs\.encode .*{encoding!r}"):
        read_mnist_pickle(path)


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch is a dict
    """Writes protocol 2 as Python 2 did: bytes as BINSTRING (a py2 ``str``), not as
    ``_codecs.encode(text, "latin1")``. The classic mnist.pkl.gz is such a file; only
    ``encoding="latin1"`` turns those strings back into the very bytes."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_binstring(self, obj: bytes) -> None:
        self.write(b"T" + struct.pack("<I", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_binstring


def test_a_python2_pickle_with_byte_strings_loads_bit_exact(tmp_path):
    want = _tiny_splits()
    with (tmp_path / "py2.pkl").open("wb") as f:
        _Python2Pickler(f, protocol=2).dump(want)
    assert b"_codecs" not in (tmp_path / "py2.pkl").read_bytes()
    got = read_mnist_pickle(tmp_path / "py2.pkl")
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert torch.equal(gx, torch.from_numpy(wx)) and torch.equal(gy, torch.from_numpy(wy))


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)),) * 2, "tuple"),
        ([(np.zeros((1, 784), np.float32), np.zeros(1, np.int64))] * 4, "list"),
        ({"a": 1, "b": 2, "c": 3}, "dict"),
        ("abc", "str"),
    ],
)
def test_anything_but_three_splits_is_named_with_its_type(tmp_path, obj, kind):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    expected = rf"^{re.escape(str(path))}: expected \(\(train_x, .*\)\), got a {kind}$"
    with pytest.raises(DataFormatError, match=expected):
        read_mnist_pickle(path)


def test_a_bad_split_is_named_with_the_file_and_the_split(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps((1, 2, 3), protocol=2))
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))} train: expected an"):
        read_mnist_pickle(path)


def test_max_bytes_bounds_the_decompressed_pickle_and_names_the_file(tmp_path):
    data = pickle.dumps(_tiny_splits(), protocol=4)
    path = tmp_path / "m.pkl.gz"
    path.write_bytes(gzip.compress(data))
    assert len(read_mnist_pickle(path, max_bytes=len(data)).train[0]) == 6
    too_big = rf"^{re.escape(str(path))} decompresses to more than {len(data) - 1} bytes"
    with pytest.raises(DataFormatError, match=too_big):
        read_mnist_pickle(path, max_bytes=len(data) - 1)
