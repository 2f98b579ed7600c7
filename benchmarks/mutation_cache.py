"""A pytest plugin for the mutation benchmark only (`mutation.py` loads it with `-p`): the same
tests, each mutant's run without the work that repeats identically in every test.

Every `process_incoming` builds the duplicate index over base MNIST's 70,000 images (about a second),
and every test session loads MNIST again (half a second): an incoming mutant that survives runs
some forty such tests. Here both are kept by content:

- `DuplicateIndex.of` answers from the few last indexes built, when the images are byte for byte
  the same (their sha1 over shape, dtype and bytes): a mutant that changes which images are
  indexed changes the key and gets an index of its own.
- `load_mnist` reads a source once and hands every caller fresh copies of its arrays, as a new
  read would.

Both are filled when the plugin is imported, before mutmut forks a process per mutant, so every
mutant starts with them. The library's modules under mutation are never touched here.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Any

import numpy as np

from mnist_pipeline.data import duplicates, mnist

_KEPT = 4  # indexes kept: the base one, and the last few of base plus accepted shards
_indexes: OrderedDict[tuple[Any, ...], duplicates.DuplicateIndex] = OrderedDict()
_build_index = duplicates.DuplicateIndex.of.__func__
_datasets: dict[tuple[Any, ...], mnist.MnistData] = {}
_read_mnist = mnist.load_mnist


def _key(images: np.ndarray) -> tuple[Any, ...]:
    array = np.ascontiguousarray(images)
    return array.shape, array.dtype.str, hashlib.sha1(array.data).hexdigest()


def _index_of(cls: type[duplicates.DuplicateIndex], images: np.ndarray) -> duplicates.DuplicateIndex:
    key = _key(images)
    if key in _indexes:
        _indexes.move_to_end(key)
        return _indexes[key]
    index = _indexes[key] = _build_index(cls, images)
    while len(_indexes) > _KEPT:
        _indexes.popitem(last=False)
    return index


def _copy(data: mnist.MnistData) -> mnist.MnistData:
    return replace(data, **{f.name: np.array(getattr(data, f.name)) for f in fields(data)})


def _load_mnist(source: str, keras_home: str = "") -> mnist.MnistData:
    # A file rewritten in place (a test's own corrupted copy) is read again.
    stat = os.stat(source) if os.path.isfile(source) else None
    key = (source, keras_home, stat and (stat.st_mtime_ns, stat.st_size, stat.st_ino))
    if key not in _datasets:
        _datasets[key] = _copy(_read_mnist(source, keras_home))
    return _copy(_datasets[key])


duplicates.DuplicateIndex.of = classmethod(_index_of)  # type: ignore[method-assign]
mnist.load_mnist = _load_mnist

# Before the forks: base MNIST, and the index every incoming run starts from (test then training
# images, as `screening.Yardstick` lays them out).
if os.environ.get("MNIST_SOURCE"):
    _base = _load_mnist(os.environ["MNIST_SOURCE"])
    duplicates.DuplicateIndex.of(np.concatenate([_base.x_test, _base.x_train]))
