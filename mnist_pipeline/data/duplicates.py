"""Near-duplicate detection: does an image repeat one of a reference set of images?

The yardstick guard uses it to keep MNIST test digits (and the held-out new-data slice) out of
training, whether they come back exactly, shifted by a pixel, or with a few pixels changed; the
duplicate check uses it to find shards made of copies of base training images or of accepted ones.

A copy is an image that differs from a reference in at most `MAX_CHANGED_PIXELS` pixels under one
of the nine one-pixel shifts. Two different writers' digits differ in dozens of pixels at least
(anti-aliased edges never agree), a re-sent copy in a handful.

Finding copies is exact and fast by the pigeonhole principle: the 784 pixels are dealt into
`_BLOCKS` (16) scattered blocks of 49, more blocks than a copy may have changed pixels, so a copy
agrees with its reference exactly on at least one block. Every block of every reference is hashed
once into one sorted table; a query's blocks (under each shift) are looked up in it, and only the
references that share a whole block with it are compared pixel by pixel. A block with no ink
(all zeros) says nothing and is left out of the table. Looking up 2,000 images among 70,000
references takes a fraction of a second, where comparing with every reference would take minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_CHANGED_PIXELS", "DuplicateIndex"]

MAX_CHANGED_PIXELS = 12  # a copy may differ in this many pixels (after the best shift) and still count
_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_BLOCKS = 16  # > MAX_CHANGED_PIXELS: a copy keeps at least one block unchanged
_PIXELS = 28 * 28
_CHUNK = 4096  # query images hashed and compared at once: bounds the temporary arrays
_MAX_PER_BLOCK = 64  # references followed per matching block (a common block says little)
_RANDOM = np.random.default_rng(20260101)  # fixed: the same blocks in every process
_BLOCK_OF = _RANDOM.permutation(_PIXELS) % _BLOCKS  # each pixel's block: scattered over the image
# Pixel x weight summed over a block: integers below 49 * 255 * 2**38 < 2**52, which float64 holds
# exactly whatever order the matrix product adds them in, so equal blocks always hash equal.
_WEIGHTS = np.zeros((_PIXELS, _BLOCKS))
_WEIGHTS[np.arange(_PIXELS), _BLOCK_OF] = _RANDOM.integers(1, 2**38, size=_PIXELS)


def _block_hashes(images: np.ndarray) -> np.ndarray:
    """(N, _BLOCKS) float64: a weighted sum of each block's pixels, 0 for a block of no ink; two
    different blocks share a hash with a chance of about 2**-38, and candidates are checked anyway."""
    flat = images.reshape(len(images), _PIXELS)
    hashes = np.empty((len(images), _BLOCKS))
    for start in range(0, len(images), _CHUNK):
        hashes[start : start + _CHUNK] = flat[start : start + _CHUNK].astype(np.float64) @ _WEIGHTS
    return hashes


def _as_images(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, 28, 28)


def _sorted_blocks(images: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Every inked block's hash, sorted, and its owner (references numbered from `first`); a
    stable sort, so that the owners of one hash are in reference order, as `extended` keeps them."""
    hashes = _block_hashes(images)
    owners = np.repeat(np.arange(first, first + len(images)), _BLOCKS).reshape(hashes.shape)
    inked = hashes != 0
    hashes, owners = hashes[inked], owners[inked]
    order = np.argsort(hashes, kind="stable")
    return hashes[order], owners[order]


def _shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(images, (dy, dx), axis=(-2, -1))


@dataclass(frozen=True)
class DuplicateIndex:
    """The reference images, with every inked block's hash in one sorted table: each distinct
    hash once, with where its run of owners starts and how long it is."""

    images: np.ndarray  # (M, 28, 28) uint8
    distinct: np.ndarray  # the distinct block hashes, sorted
    starts: np.ndarray  # where each distinct hash's owners start in `owners`
    counts: np.ndarray  # how many references hold each distinct hash
    owners: np.ndarray  # the reference of every block hash, in hash order

    @classmethod
    def of(cls, images: np.ndarray) -> DuplicateIndex:
        images = _as_images(images)
        return cls._of_sorted(images, *_sorted_blocks(images, 0))

    def extended(self, images: np.ndarray) -> DuplicateIndex:
        """This index with `images` as further references, numbered after these: the same as `of`
        over both, without hashing and sorting these references again."""
        images = _as_images(images)
        hashes, owners = _sorted_blocks(images, len(self.images))
        mine = np.repeat(self.distinct, self.counts)  # every block hash, in order
        at = np.searchsorted(mine, hashes, side="right")  # after equal ones: owners stay in order
        merged = np.concatenate([self.images, images])
        return self._of_sorted(merged, np.insert(mine, at, hashes), np.insert(self.owners, at, owners))

    @classmethod
    def _of_sorted(cls, images: np.ndarray, hashes: np.ndarray, owners: np.ndarray) -> DuplicateIndex:
        starts = np.flatnonzero(np.diff(hashes, prepend=-1.0))  # -1: no hash, so a run starts at 0
        counts = np.diff(starts, append=len(hashes))
        return cls(images, hashes[starts], starts, counts, owners)

    def duplicates(self, images: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `images` (N, 28, 28) repeat a reference image."""
        mask = np.zeros(len(images), dtype=bool)
        mask[self.pairs(images)[0]] = True
        return mask

    def pairs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query indices, reference indices): every pair where the query copies the reference,
        ordered by query then reference."""
        found = [
            self._pairs(images[start : start + _CHUNK], start) for start in range(0, len(images), _CHUNK)
        ]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate([q for q, _ in found]), np.concatenate([r for _, r in found])

    def _pairs(self, images: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        candidates = [self._candidates(_shifted(images, dy, dx)) for dy, dx in _SHIFTS]
        queries, shifts, references = [], [], []
        for shift, (query, reference) in enumerate(candidates):
            queries.append(query)
            shifts.append(np.full(len(query), shift))
            references.append(reference)
        query, shift, reference = (np.concatenate(part) for part in (queries, shifts, references))
        triples = np.unique(np.stack([query, reference, shift], axis=1), axis=0)
        changed = self._changed_pixels(images, triples)
        copies = np.unique(triples[changed <= MAX_CHANGED_PIXELS, :2], axis=0)
        return copies[:, 0] + offset, copies[:, 1]

    def _candidates(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query, reference) pairs that share at least one whole inked block."""
        if len(self.distinct) == 0:  # references without ink: nothing to share
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        hashes = _block_hashes(queries).ravel()
        found = np.minimum(np.searchsorted(self.distinct, hashes), len(self.distinct) - 1)
        known = (hashes != 0) & (self.distinct[found] == hashes)
        counts = np.where(known, np.minimum(self.counts[found], _MAX_PER_BLOCK), 0)
        total = int(counts.sum())
        positions = np.repeat(self.starts[found] - np.cumsum(counts) + counts, counts) + np.arange(total)
        query = np.repeat(np.arange(len(hashes)) // _BLOCKS, counts)
        return query, self.owners[positions]

    def _changed_pixels(self, images: np.ndarray, triples: np.ndarray) -> np.ndarray:
        """Pixels by which each (query, reference, shift) triple differs, the query shifted."""
        changed = np.empty(len(triples), dtype=np.int64)
        for shift, (dy, dx) in enumerate(_SHIFTS):
            rows = np.flatnonzero(triples[:, 2] == shift)
            if len(rows):
                query = _shifted(images[triples[rows, 0]], dy, dx)
                changed[rows] = (query != self.images[triples[rows, 1]]).sum(axis=(1, 2))
        return changed
