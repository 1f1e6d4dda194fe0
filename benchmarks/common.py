"""Shared by the benchmarks: timing, models and a description of the machine."""

import os
import platform
import statistics
import time
from typing import Callable, List

import keras
import numpy as np
import tensorflow as tf

APPLICATIONS = {
    "ResNet50V2": keras.applications.ResNet50V2,
    "MobileNetV2": keras.applications.MobileNetV2,
}


def application(name: str, size: int = 224) -> keras.Model:
    """A keras.applications model with random weights and a logits head."""
    keras.utils.set_random_seed(0)
    return APPLICATIONS[name](weights=None, input_shape=(size, size, 3),
                              classifier_activation=None)


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
