"""The tree of a batch: which objects are structures, how they are rebuilt, and the optree walks.

Every walk of :mod:`pluglearn.data.batch_ops` goes through optree in the namespace :data:`NAMESPACE`
(``"pluglearn"``): what is registered there changes nothing for torch or any other library
that uses optree. Structure nodes, each rebuilt with its own type:

* tuples, dicts, ``OrderedDict`` and ``defaultdict`` (optree's own nodes; a dict's entries are
  walked in sorted key order and rebuilt in their own order);
* named tuples, rebuilt with ``tuple.__new__``: a custom ``__new__`` does not run again;
* dataclasses (frozen ones too), rebuilt from their fields with ``object.__new__``: neither
  ``__init__`` nor ``__post_init__`` runs again, so a ``__post_init__`` that transforms a field
  has run once, when the dataset built the item;
* other mappings (a ``UserDict``, Hugging Face's ``BatchEncoding``, a dict subclass), rebuilt
  as ``type(m)(entries)``, or as a dict when that constructor refuses a dict;
* lists, at the top: see below.

Named tuples, dataclasses and other mappings are registered the first time one is seen (a type
registered in the namespace beforehand, by a user, keeps its registration). ``None`` is an
empty structure.

Lists: at the top of a batch or of a dataset item a list is a structure (torch's DataLoader
yields ``[xb, yb]``; a dataset may return ``[x, y]``). Below the top a list holds one entry
per item (per-item strings, tensors of different shapes, dicts): the batch walks
(:func:`flatten`) see it as one leaf, the maps (:func:`walk_map`) walk into its entries. A part
of a batch (``learn.yb``, predictions) is walked with ``top=False``: a list at its root holds
one entry per item too.

Example::

    >>> flat = flatten((torch.zeros(2), ["a", "b"]), top=True)
    >>> [type(leaf).__name__ for leaf in flat.leaves]
    ['Tensor', 'list']
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import optree

#: the optree namespace of every registration and walk of pluglearn
NAMESPACE = "pluglearn"

_seen: set[type] = set()  # types classified (and registered when structures) so far
_lock = threading.Lock()
_OPTREE_MAPPINGS = (dict, OrderedDict, defaultdict)


def _register_dataclass(cls: type) -> None:
    names = tuple(f.name for f in dataclasses.fields(cls))

    def rebuild(_: Any, children: Any) -> Any:
        obj = object.__new__(cls)
        for name, value in zip(names, children, strict=True):
            object.__setattr__(obj, name, value)  # frozen dataclasses too
        return obj

    optree.register_pytree_node(
        cls,
        lambda obj: ([getattr(obj, n) for n in names], None, names),
        rebuild,
        path_entry_type=optree.DataclassEntry,
        namespace=NAMESPACE,
    )


def _register_namedtuple(cls: type) -> None:
    with warnings.catch_warnings():  # optree warns that it overrides its global named tuples
        warnings.simplefilter("ignore", UserWarning)
        optree.register_pytree_node(
            cls,
            lambda obj: (list(obj), None, None),
            lambda _, children: tuple.__new__(cls, children),
            path_entry_type=optree.NamedTupleEntry,
            namespace=NAMESPACE,
        )


def _rebuild_mapping(cls: type, keys: tuple[Any, ...], children: Any) -> Any:
    entries = dict(zip(keys, children, strict=True))
    try:
        return cls(entries)
    except TypeError:  # a constructor that takes no dict
        return entries


def _register_mapping(cls: type) -> None:
    optree.register_pytree_node(
        cls,
        lambda obj: ([obj[k] for k in obj], tuple(obj), tuple(obj)),
        lambda keys, children: _rebuild_mapping(cls, keys, children),
        path_entry_type=optree.MappingEntry,
        namespace=NAMESPACE,
    )


def _classify(cls: type) -> None:
    """Register ``cls`` as a structure node when it is one (see the module doc)."""
    with _lock:
        if cls in _seen:
            return
        try:
            if dataclasses.is_dataclass(cls):
                _register_dataclass(cls)
            elif optree.is_namedtuple_class(cls):
                _register_namedtuple(cls)
            elif issubclass(cls, Mapping) and cls not in _OPTREE_MAPPINGS:
                _register_mapping(cls)
        except ValueError:  # registered in the namespace already: that registration stands
            pass
        _seen.add(cls)


def _on_sight(obj: Any) -> bool:
    """optree's ``is_leaf`` of the maps: registers a structure type the first time it is seen;
    never makes a leaf itself."""
    if type(obj) not in _seen:
        _classify(type(obj))
    return False


def _per_item_list(obj: Any) -> bool:
    """optree's ``is_leaf`` of the batch walks: a list is a leaf (one entry per item)."""
    if type(obj) is list:
        return True
    if type(obj) not in _seen:
        _classify(type(obj))
    return False


class Flat(NamedTuple):
    """A structure flattened for a batch walk: its leaves in walk order, its treespec, and
    whether it is a list walked as a structure (the top of a batch), rebuilt as a list.

    Example: ``flatten([x, y], top=True)`` is ``Flat([x, y], <spec of (x, y)>, True)``."""

    leaves: list[Any]
    spec: optree.PyTreeSpec
    top_list: bool


def flatten(obj: Any, top: bool) -> Flat:
    """``obj`` flattened for a batch walk: lists below the top are leaves; ``top`` says whether
    ``obj`` is a whole batch or dataset item (its own list is a structure) or a part of one.

    Example: ``flatten([x, [1, 2]], top=True).leaves == [x, [1, 2]]``."""
    top_list = top and type(obj) is list
    leaves, spec = optree.tree_flatten(
        tuple(obj) if top_list else obj, is_leaf=_per_item_list, namespace=NAMESPACE
    )
    return Flat(leaves, spec, top_list)


def unflatten(flat: Flat, leaves: list[Any]) -> Any:
    """The structure of ``flat`` rebuilt around new ``leaves``.

    Example: ``unflatten(flatten((a, b), top=True), [c, d]) == (c, d)``."""
    out = optree.tree_unflatten(flat.spec, leaves)
    return list(out) if flat.top_list else out


def walk_map(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``obj`` rebuilt with ``fn`` applied to every leaf; lists at any depth are walked into.

    Example: ``walk_map(str, (1, [2]))  == ("1", ["2"])``."""
    return optree.tree_map(fn, obj, is_leaf=_on_sight, namespace=NAMESPACE)


def all_leaves(obj: Any) -> list[Any]:
    """Every leaf of ``obj`` in walk order; lists at any depth are walked into.

    Example: ``all_leaves({"b": 1, "a": [2, 3]}) == [2, 3, 1]``."""
    return optree.tree_leaves(obj, is_leaf=_on_sight, namespace=NAMESPACE)


def leaves_and_structure(obj: Any) -> tuple[list[Any], str]:
    """:func:`all_leaves` and the structure around them as text (containers, keys, classes),
    the same in every process: what a digest of a batch reads.

    Example: ``leaves_and_structure({"a": [1]}) == ([1], "PyTreeSpec({'a': [*]})")``."""
    leaves, spec = optree.tree_flatten(obj, is_leaf=_on_sight, namespace=NAMESPACE)
    return leaves, str(spec)


def path_names(obj: Any, top: bool, root: str) -> list[str]:
    """Where each leaf of :func:`flatten` lies in ``obj``, as code: ``root[1]['names']``.

    Example: ``path_names((x, {"a": y}), True, "batch") == ["batch[0]", "batch[1]['a']"]``."""
    top_list = top and type(obj) is list
    accessors, _, _ = optree.tree_flatten_with_accessor(
        tuple(obj) if top_list else obj, is_leaf=_per_item_list, namespace=NAMESPACE
    )
    return [accessor.codify(root) for accessor in accessors]


def _children(obj: Any, top: bool) -> tuple[list[Any], tuple[Any, ...]] | None:
    """``obj``'s children and their entries (keys, indices, field names); None for a leaf."""
    if type(obj) is list:
        return (list(obj), tuple(range(len(obj)))) if top else None
    try:
        level = optree.tree_flatten_one_level(obj, is_leaf=_on_sight, namespace=NAMESPACE)
    except ValueError:  # a leaf
        return None
    return list(level[0]), tuple(level[2])  # (children, metadata, entries, unflatten_func)


def _step(obj: Any, entry: Any) -> str:
    if isinstance(obj, Mapping) or not isinstance(entry, (str, int)):
        return f"[{entry!r}]"
    return f".{entry}" if isinstance(entry, str) else f"[{entry}]"


def _difference(a: Any, b: Any, path: str, top: bool, what: str, fix: str) -> Exception | None:
    mine, theirs = _children(a, top), _children(b, top)
    if mine is None and theirs is None:
        return None  # two leaves: the leaf rules compare their kinds
    at = "" if top else f" at {path}"
    if mine is None or theirs is None or type(a) is not type(b):
        kinds = f"{type(a).__name__}, {type(b).__name__}"
        return TypeError(f"{what} have different types{at} ({kinds}): {fix}.")
    if mine[1] != theirs[1]:
        if isinstance(a, Mapping):
            keys = f"{list(a)} and {list(b)}"
            return ValueError(f"{what} have different keys{at} ({keys}): {fix}.")
        sizes = f"{len(mine[1])} and {len(theirs[1])}"
        return ValueError(f"{what} have different numbers of fields{at} ({sizes}): {fix}.")
    for entry, x, y in zip(mine[1], mine[0], theirs[0], strict=True):
        found = _difference(x, y, path + _step(a, entry), False, what, fix)
        if found is not None:
            return found
    return None


def mismatch(first: Any, other: Any, what: str, root: str, top: bool = True) -> Exception:
    """The error for two structures that a walk needs alike but are not: the first place they
    differ, with the fix. ``what`` is the subject (``"collate: the items of one batch"``).

    Example: ``raise mismatch(items[0], items[3], "collate: the items of one batch", "item")``."""
    fix = (
        "make the dataset return one structure for every item"
        if root == "item"
        else "return one structure for every batch"
    )
    found = _difference(first, other, root, top, what, fix)
    if found is not None:
        return found
    a, b = flatten(first, top).spec, flatten(other, top).spec
    return TypeError(f"{what} have different structures ({a} and {b}): {fix}.")
