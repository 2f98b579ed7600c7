"""`tf.data` input pipelines. Images stay uint8 (the model rescales them), so the cache is 4x smaller."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["Augmentation", "augment_batch", "make_eval_dataset", "make_train_dataset"]


@dataclass(frozen=True)
class Augmentation:
    """Random shifts (a fraction of the image) and rotations (a fraction of a full turn)."""

    max_shift: float = 0.0
    max_rotation: float = 0.0

    @property
    def active(self) -> bool:
        return self.max_shift > 0 or self.max_rotation > 0


def _options() -> tf.data.Options:
    import tensorflow as tf

    options = tf.data.Options()
    # In-memory tensors cannot be sharded by file; shard by element across replicas instead.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    global_batch: int,
    seed: int,
    augmentation: Augmentation | None = None,
) -> tf.data.Dataset:
    """cache -> shuffle (every epoch, seeded) -> batch -> augment (seeded) -> prefetch.

    Augmenting whole batches in the input pipeline, not in the model, keeps it out of the
    training step: tf.data's threads move the next batch's digits while the step runs, and the
    model that ships holds no random layers.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).batch(global_batch)
    if augmentation is not None and augmentation.active:
        # One seed per batch, different every epoch and the same in every run with this seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, batch_seed: (augment_batch(batch[0], batch_seed, augmentation), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """uint8 images (N, H, W), each shifted and rotated about its centre by its own random
    amount, in one bilinear resampling (one affine transform per image; the corners fill black)."""
    import tensorflow as tf

    batch = tf.shape(images)[:1]  # [N]
    height, width = images.shape[1], images.shape[2]
    assert height is not None and width is not None, "augment_batch needs the images' static size"
    # tf.random.split is tf.random.experimental.stateless_split under its stable name.
    angle_seed, dx_seed, dy_seed = tf.unstack(tf.random.split(tf.convert_to_tensor([seed, 0]), 3))
    turn = augmentation.max_rotation * 2 * math.pi
    angle = tf.random.stateless_uniform(batch, angle_seed, -turn, turn)
    dx = tf.random.stateless_uniform(batch, dx_seed, -1, 1) * augmentation.max_shift * width
    dy = tf.random.stateless_uniform(batch, dy_seed, -1, 1) * augmentation.max_shift * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # Each output pixel (x, y) samples the input at R(x - c, y - c) + c - shift.
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy - dx, sin, cos, cy - sin * cx - cos * cy - dy, zeros, zeros],
        axis=1,
    )
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(tf.expand_dims(images, -1), tf.float32),
        transforms=transforms,
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.cast(tf.round(tf.clip_by_value(moved[..., 0], 0, 255)), tf.uint8)


def make_eval_dataset(images: np.ndarray, labels: np.ndarray, global_batch: int) -> tf.data.Dataset:
    """batch -> cache -> prefetch: evaluation order is fixed, so the batches themselves are cached."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch).cache()
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())
