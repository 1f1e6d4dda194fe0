"""Shared by the benchmarks: timing, models and a description of the machine."""

import os
import platform
import statistics
import time
from typing import Callable, List

import keras
import numpy as np
import tensorflow as tf


def _vit_b16(size: int, head):
    """KerasHub's ViT-B/16 (12 blocks of 768 channels, 12 heads, MLP 3072), 1000 classes."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=16, num_layers=12, num_heads=12,
        hidden_dim=768, mlp_dim=3072)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000,
                                               activation=head)


APPLICATIONS = {
    "ResNet50V2": keras.applications.ResNet50V2,
    "MobileNetV2": keras.applications.MobileNetV2,
    "ConvNeXtTiny": keras.applications.ConvNeXtTiny,
}
"""keras.applications models the benchmarks build by name; "ViT-B/16" is KerasHub's."""


def application(name: str, size: int = 224, head=None) -> keras.Model:
    """A model with random weights and a logits head (`head=None`) or another
    (`head="softmax"`, keras.applications' default): a keras.applications model of
    `APPLICATIONS`, or "ViT-B/16"."""
    keras.utils.set_random_seed(0)
    if name == "ViT-B/16":
        return _vit_b16(size, head)
    return APPLICATIONS[name](weights=None, input_shape=(size, size, 3),
                              classifier_activation=head)


def images(batch: int, size: int = 224) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    devices = f"{len(gpus)} GPU(s)" if gpus else "CPU only"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {devices}; "
            f"TF {tf.__version__}, Keras {keras.__version__}")
