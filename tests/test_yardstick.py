"""The yardstick guard and shard statistics: MNIST test digits (and the held-out new-data slice)
never reach training, whether they come back exactly, shifted or retouched; blank images reject a
shard; a skewed label histogram is accepted but flagged."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mnist_pipeline.data.incoming import INCOMING, accepted_shards, announce_pending, process_incoming
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.slices import held_out_mask
from mnist_pipeline.storage import Storage, open_storage
from tests.new_digits import new_digits


def drop_shard(storage: Storage, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels)
    storage.write_bytes(f"{INCOMING}{name}", buffer.getvalue())


def retouched(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every third image shifted by a pixel, every third with four pixels changed, the rest as is."""
    rng = np.random.default_rng(seed)
    out = np.array(images)
    for i in range(0, len(out), 3):
        out[i] = np.roll(out[i], (int(rng.choice([-1, 1])), int(rng.choice([-1, 0, 1]))), axis=(0, 1))
    for i in range(1, len(out), 3):
        out[i, rng.integers(4, 24, 4), rng.integers(4, 24, 4)] = rng.integers(0, 256, 4)
    return out


def placed(storage: Storage, mnist: MnistData) -> tuple[dict[str, dict], dict[str, str]]:
    report = process_incoming(storage, "run-guard", mnist)
    return {s["source"]: s for s in report.accepted}, {r["shard"]: r["reason"] for r in report.rejected}


@pytest.fixture
def storage(tmp_path) -> Storage:
    return open_storage(str(tmp_path / "artifacts"))


def test_test_digits_are_rejected_exact_shifted_or_retouched(storage: Storage, mnist: MnistData) -> None:
    drop_shard(storage, "leak.npz", retouched(mnist.x_test[:300]), mnist.y_test[:300])
    accepted, rejected = placed(storage, mnist)
    assert accepted == {}
    assert "300 of 300 images duplicate MNIST test images" in rejected["leak.npz"]


def test_a_few_test_digits_hidden_among_new_ones_reject_the_shard(storage: Storage, mnist: MnistData) -> None:
    images = np.concatenate([new_digits(mnist.x_train[:280]), retouched(mnist.x_test[5000:5020], seed=1)])
    labels = np.concatenate([mnist.y_train[:280], mnist.y_test[5000:5020]])
    drop_shard(storage, "mixed.npz", images, labels)
    assert "20 of 300 images duplicate MNIST test images" in placed(storage, mnist)[1]["mixed.npz"]


def test_training_digits_are_accepted_without_a_flag(storage: Storage, mnist: MnistData) -> None:
    drop_shard(storage, "fresh.npz", new_digits(mnist.x_train[-1000:]), mnist.y_train[-1000:])
    accepted, rejected = placed(storage, mnist)
    assert rejected == {} and accepted["fresh.npz"]["flags"] == []
    stats = accepted["fresh.npz"]["statistics"]
    assert (
        sum(stats["label_counts"]) == 1000 and stats["blank_images"] == 0 and stats["label_p_value"] > 0.001
    )
    assert 0.5 * stats["base_ink"] < stats["ink"] < 1.5 * stats["base_ink"]


def test_a_skewed_shard_is_accepted_and_flagged_up_to_the_announcement(
    storage: Storage, mnist: MnistData
) -> None:
    drop_shard(storage, "ones.npz", new_digits(mnist.x_train[:1000]), np.ones(1000, np.uint8))
    accepted, _ = placed(storage, mnist)
    (flag,) = accepted["ones.npz"]["flags"]
    assert "100% are 1" in flag and "chi-square" in flag
    assert accepted_shards(storage)[0]["flags"] == [flag]  # in the sidecar
    announcement = announce_pending(storage, threshold=1000)
    assert announcement is not None and announcement["flagged"][0]["flags"] == [flag]


def test_blank_images_reject_the_shard(storage: Storage, mnist: MnistData) -> None:
    images = new_digits(mnist.x_train[:100])
    images[[3, 50]] = 0
    drop_shard(storage, "blank.npz", images, mnist.y_train[:100])
    assert "2 of 100 images are blank" in placed(storage, mnist)[1]["blank.npz"]


def test_copies_of_the_held_out_new_data_slice_are_rejected(storage: Storage, mnist: MnistData) -> None:
    first = new_digits(mnist.x_train[-2000:])
    drop_shard(storage, "first.npz", first, mnist.y_train[-2000:])
    held = first[held_out_mask(first)]
    assert len(held) > 100
    shifted = np.roll(held[:50], 1, axis=2)  # a shifted copy lands on the training side by its own hash
    drop_shard(storage, "second.npz", shifted, np.zeros(len(shifted), np.uint8))
    accepted, rejected = placed(storage, mnist)
    assert set(accepted) == {"first.npz"}
    assert "50 of 50 images duplicate held-out new-data images" in rejected["second.npz"]


def test_an_image_keeps_its_side_of_the_split_whatever_shard_brings_it(mnist: MnistData) -> None:
    images = mnist.x_train[:3000]
    mask = held_out_mask(images)
    assert 0.07 < mask.mean() < 0.13
    assert np.array_equal(held_out_mask(images[::-1]), mask[::-1])
    assert np.array_equal(held_out_mask(images[1000:]), mask[1000:])


# --- the index of base MNIST, built once and extended with the accepted shards ---------------------


def assert_same_index(got, expected) -> None:
    from dataclasses import fields

    for field in fields(expected):
        assert np.array_equal(getattr(got, field.name), getattr(expected, field.name)), field.name


def test_an_index_extended_with_more_references_equals_one_built_over_all_of_them(mnist: MnistData) -> None:
    from mnist_pipeline.data.duplicates import DuplicateIndex

    base = mnist.x_train[:3000]
    # Copies of base images (their blocks' hashes repeat the base's), honest new digits, blanks.
    more = np.concatenate([retouched(base[:40]), new_digits(mnist.x_train[3000:3100]), np.zeros((5, 28, 28))])
    more = more.astype(np.uint8)
    assert_same_index(DuplicateIndex.of(base).extended(more), DuplicateIndex.of(np.concatenate([base, more])))
    assert_same_index(DuplicateIndex.of(base).extended(more[:0]), DuplicateIndex.of(base))
    assert_same_index(DuplicateIndex.of(base[:0]).extended(more), DuplicateIndex.of(more))
    extended = DuplicateIndex.of(base).extended(more)
    assert (
        extended.duplicates(base[:40]).all()
        and not extended.duplicates(new_digits(mnist.x_train[5000:5020])).any()
    )


def test_the_base_index_is_built_once_for_the_same_images_and_anew_for_others(mnist: MnistData) -> None:
    from dataclasses import replace

    from mnist_pipeline.data.screening import base_index

    first = base_index(mnist)
    assert base_index(replace(mnist, y_train=mnist.y_train.copy())) is first  # the images decide
    for split in ("x_test", "x_train"):  # one pixel changed in either split: another index
        images = np.array(getattr(mnist, split))
        images[-1, 14, 14] ^= 0xFF
        other = replace(mnist, **{split: images})
        changed = base_index(other)
        assert changed is not first and changed is base_index(other)
        assert np.array_equal(changed.images, np.concatenate([other.x_test, other.x_train]))
    assert np.array_equal(base_index(mnist).images, np.concatenate([mnist.x_test, mnist.x_train]))
