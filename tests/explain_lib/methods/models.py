"""Tiny models with known structure, for the methods' property tests, and settings that
keep the multi-pass methods quick on them."""

from typing import Callable, Dict, Tuple

import keras
import numpy as np

from explain_lib import inspection, methods
from explain_lib.methods import cams, meta
from tests.conftest import tiny_cnn


def registered_methods() -> Dict[str, Tuple[Callable, bool]]:
    """Every registered method that explains any model by name: (its function, whether it
    takes the exposed model), as the registry declares them. The methods that read a
    transformer's attention are tested on one (`tests/explain_lib/methods/test_attention.py`)."""
    return {name: (method.function, method.exposed) for name, method in methods.REGISTRY.items()
            if not method.attention}


FAST_SETTINGS = {
    "integrated_gradients": {"n_steps": 5, "chunk_size": 2, "baseline": "blur", "blur_sigma": 1.0},
    "smoothgrad": {"repetitions": 5, "noise_chunk_size": 2},
    "vargrad": {"repetitions": 5, "noise_chunk_size": 2},
    "squaregrad": {"repetitions": 5, "noise_chunk_size": 2},
    "scorecam": {"chunk_size": 3},
    "ablationcam": {"chunk_size": 3},
    "occlusion": {"patch_size": 4, "stride": 3, "chunk_size": 5},
    "rise": {"masks": 24, "cell_size": 4, "chunk_size": 10},
    "gradient_shap": {"n_samples": 4, "chunk_size": 2},
    "sobol": {"grid_size": 3, "n_designs": 4, "chunk_size": 11},
    "lime": {"segmentation": "grid", "grid_size": 3, "n_samples": 20, "chunk_size": 10},
    "kernel_shap": {"segmentation": "grid", "grid_size": 3, "n_samples": 20, "chunk_size": 10},
}
"""Method parameters for 12x12 inputs, small enough for quick tests, uneven chunks included
(the sampling and surrogate methods' chunks divide their samples: one trace of the loop; their
own tests cover uneven chunks)."""

SMOOTH_TTA_GRADCAM = (meta.smooth(meta.tta(cams.gradcam, scales=(1.5,)), 2, 0.2, 2), True)
"""A meta method over a meta method over a CAM, as a `registered_methods` entry: SmoothGrad
of TTA (the input, its mirror, 1.5x and its mirror) of Grad-CAM. Two noisy copies in one
chunk, so SmoothGrad's copies are stacked into one batch and TTA rescales that batch;
SmoothGrad's chunking (a loop and an uneven last chunk) is what the `smoothgrad` case's
`FAST_SETTINGS` exercise. Each chunk traces Grad-CAM once per augmentation: one chunk keeps
this, the costliest case to trace, at four."""


ROUTING = {
    "gradients": {"gradient_filter": "square"},
    "input_x_gradient": {},
    "integrated_gradients": {"baseline": 0.5, "n_steps": 2, "chunk_size": 0, "blur_sigma": 3.0},
    "full_gradients": {"psi": "positive_normalize"},
    "smoothgrad": {"repetitions": 3, "noise": 0.3, "noise_chunk_size": 0, "noise_seed": 1,
                   "gradient_filter": "square"},
    "vargrad": {"repetitions": 3, "noise": 0.3, "noise_chunk_size": 0, "noise_seed": 1,
                "gradient_filter": "square"},
    "squaregrad": {"repetitions": 3, "noise": 0.3, "noise_chunk_size": 0, "noise_seed": 1,
                   "gradient_filter": "square"},
    "cam": {"logits_layer": "conv1"},
    "gradcam": {},
    "gradcampp": {},
    "scorecam": {"score": "logit", "chunk_size": 0, "max_channels": 2},
    "layercam": {},
    "xgradcam": {},
    "hirescam": {},
    "eigencam": {},
    "ablationcam": {"chunk_size": 0},
    "guided_backprop": {"gradient_filter": "square"},
    "deconvnet": {"gradient_filter": "square"},
    "guided_gradcam": {"gradient_filter": "square"},
    "occlusion": {"patch_size": 6, "stride": 2, "baseline": 0.5, "score": "logit",
                  "chunk_size": 0},
    "rise": {"masks": 12, "cell_size": 3, "keep_probability": 0.3, "seed": 1, "score": "logit",
             "chunk_size": 0},
    "gradient_shap": {"baselines": 0.5, "n_samples": 3, "stdevs": 0.2, "seed": 1,
                      "chunk_size": 0},
    "sobol": {"grid_size": 2, "n_designs": 8, "perturbation": "amplitude", "seed": 1,
              "score": "logit", "chunk_size": 0},
    "lime": {"segmentation": "quickshift", "grid_size": 2, "n_samples": 12, "kernel_width": 1.0,
             "ridge": 0.1, "baseline": 0.5, "seed": 1, "score": "logit", "chunk_size": 0},
    "kernel_shap": {"segmentation": "quickshift", "grid_size": 2, "n_samples": 12,
                    "baseline": 0.5, "seed": 1, "score": "logit", "chunk_size": 0},
}
"""For every registered method, a changed value of each of its parameters. A changed value
changes the maps, except for the chunk sizes, which bound memory and leave the maps as they
are by design: for them the changed value is 0, which the method refuses by name (so the test
still sees it arrive), and `ROUTING_SAME` is the valid change that must leave the maps equal.
CAM's only parameter, `logits_layer`, has one right value on a model with one Dense head:
the changed value is a layer CAM refuses by name. Integrated Gradients' `blur_sigma` matters
with the "blur" baseline only, which `FAST_SETTINGS` sets for it."""

ROUTING_SAME = {"chunk_size": 1, "noise_chunk_size": 1}
ROUTING_REFUSED = {("cam", "logits_layer"): "CAM weighs"}
"""(method, parameter): what the method's error for the changed value says; for the chunk
sizes, the error names the parameter with its value 0."""


def rounding_tolerance(name: str, maps: np.ndarray, ulps: float = 1e-6) -> float:
    """The absolute tolerance for comparing `maps` of method `name` computed in two ways
    (two replicas, XLA, another batch layout): float32 rounding differs by a few ulps of the
    quantities a map is computed from, which can be larger than the map where terms cancel.
    For the methods that weigh perturbed inputs by a score (a `score` parameter) those are
    the scores, probabilities of at most 1, whose differences occlusion's maps are; for the
    others the map's own largest value. `ulps` scales either."""
    scale = np.abs(maps).max()
    if name in methods.REGISTRY and "score" in methods.get(name).parameters:
        scale = max(scale, 1.0)
    return ulps * scale


def on_one_device_and_two_replicas(strategy, seed):
    """((model, exposed model) on one device, the same weights on the two replicas of
    `strategy`): `tests.conftest.tiny_cnn` taking any image size."""
    single = tiny_cnn(input_shape=(None, None, 3), seed=seed)
    with strategy.scope():
        replicated = tiny_cnn(input_shape=(None, None, 3), seed=seed)
        replicated_exposed = inspection.expose(replicated)
    assert replicated_exposed.distribute_strategy.num_replicas_in_sync == 2
    return (single, inspection.expose(single)), (replicated, replicated_exposed)


def linear_model(input_shape=(8, 8, 3), units=4, seed=0):
    """f(x) = W·x + b: a Dense layer on the flattened input. Returns (model, W (H, W, C, U))."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input(input_shape), keras.layers.Flatten(),
         keras.layers.Dense(units, bias_initializer="random_normal")]
    )
    kernel = model.layers[-1].kernel.numpy().reshape(*input_shape, units)
    return model, kernel


def smooth_model(input_shape=(10, 10, 3), units=3, seed=0):
    """A smooth (C-infinity) CNN: tanh and softplus activations, global pooling, Dense."""
    keras.utils.set_random_seed(seed)
    # Large weights, so that the output moves visibly between an input and a baseline.
    weights = keras.initializers.RandomNormal(stddev=0.6)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(6, 3, padding="same", activation="tanh",
                                kernel_initializer=weights),
            keras.layers.Conv2D(8, 3, activation="softplus", kernel_initializer=weights),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(units, kernel_initializer=weights),
        ]
    )


def relu_network(input_shape=(12, 12, 3), units=4, seed=0):
    """A piecewise-linear network with every kind of bias Full-Gradient handles: convolution
    biases, BatchNormalization's implicit bias (non-trivial statistics), a fused ReLU, a
    separate ReLU, max pooling and a hidden Dense layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(5, 3, padding="same", bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7, activation="relu", bias_initializer="random_normal")(x)
    outputs = keras.layers.Dense(units, bias_initializer="random_normal")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=5).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=5).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=5).astype("float32"))
    bn.beta.assign(rng.normal(size=5).astype("float32"))
    return model


def nonlinear_head(input_shape=(8, 8, 3), units=3, seed=0):
    """An exposed model [logits, A] whose head is not linear in A (1x1 convolution + ReLU,
    global average pooling, Dense), so that dlogit/dA varies over positions.

    Returns (exposed model, features model x -> A, W1 (C, D), b1 (D,), W2 (D, U))."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    features = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    mixer = keras.layers.Conv2D(5, 1, activation="relu", bias_initializer="random_normal")
    dense = keras.layers.Dense(units)
    logits = dense(keras.layers.GlobalAveragePooling2D()(mixer(features)))
    exposed = keras.Model(inputs, [logits, features])
    w1 = mixer.kernel.numpy()[0, 0]
    return exposed, keras.Model(inputs, features), w1, mixer.bias.numpy(), dense.kernel.numpy()


def region_model(input_shape=(16, 16, 1), rows=(6, 10), cols=(4, 8), units=2, seed=0):
    """A model that reads only the pixels rows[0]:rows[1], cols[0]:cols[1] (then a small
    ReLU network)."""
    keras.utils.set_random_seed(seed)
    height, width = input_shape[:2]
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Cropping2D(((rows[0], height - rows[1]), (cols[0], width - cols[1]))),
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="relu", bias_initializer="ones"),
            keras.layers.Dense(units),
        ]
    )
