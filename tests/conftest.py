"""Shared test setup.

Multi-replica behaviour is tested on CPU: the one physical CPU is split into two logical
devices before TensorFlow initialises its devices, so a `MirroredStrategy` over them runs
two real replicas. Every test module sees the same two devices.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy():
    """A MirroredStrategy with two replicas on the two logical CPUs."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


def tiny_cnn(input_shape=(12, 12, 3), units=5, seed=0, name=None):
    """A small GAP-headed CNN with BatchNormalization, random but fixed weights."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(units, name="logits"),
        ],
        name=name,
    )
    # Non-trivial BatchNormalization statistics, so that its implicit bias matters.
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=6).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=6).astype("float32"))
    bn.beta.assign(rng.normal(size=6).astype("float32"))
    return model


@pytest.fixture
def images():
    return np.random.default_rng(1).uniform(0, 1, (7, 12, 12, 3)).astype("float32")
