"""Inputs travel in their own dtype: uint8 pixels reach the compiled step as uint8 and are
cast to floatx and preprocessed there (`loop.model_inputs`), for `explain`,
`explain_predicted` and `evaluate`; the maps and scores are those of the float path (numpy
preprocessing on the host, float32 inputs) within float32 rounding."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib.engine import evaluating, explaining
from explain_lib.methods.cams import gradcam
from explain_lib.methods.gradient import gradients, integrated_gradients
from tests.conftest import tiny_cnn


def symmetric(x):
    """[0, 255] -> [-1, 1] in TF ops: what the engine runs in its step."""
    return x / 127.5 - 1.0


def symmetric_on_host(pixels):
    """The same in numpy on float32 pixels: the float path."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(4).integers(0, 256, (7, 12, 12, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def units():
    return np.random.default_rng(5).integers(0, 5, (7, 2)).astype(np.int32)


def step_dtypes(model):
    """The input dtypes of the explain steps compiled for `model`."""
    return {key[4] for key in explaining._compiled_steps[model]}


def assert_float32_close(actual, expected, tolerance=1e-6):
    """Equal within float32 rounding: the step's division is Grappler's (constant folding
    makes `x / 127.5` a product with the reciprocal), numpy's the exact one, so a few
    preprocessed pixels differ by one ulp, and the maps and scores by a few ulps of their
    largest value (`tolerance`, relative to it)."""
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=tolerance * scale)


@pytest.mark.slow
@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("method, params", [
    (gradients, {}), (integrated_gradients, {"n_steps": 4}), (gradcam, {"resizing": False}),
], ids=["gradients", "integrated_gradients", "gradcam"])
def test_uint8_pixels_preprocessed_in_the_step_give_the_float_paths_maps(
        pixels, units, method, params, xla):
    model = tiny_cnn(seed=2)
    if method is gradcam:
        model = explain_lib.inspection.expose(model)
    if xla:
        model = keras.Model(model.inputs, model.outputs)
        model.jit_compile = True
    expected = explain_lib.explain(method, model, symmetric_on_host(pixels), units,
                                   batch_size=3, verbose=0, return_probabilities=True,
                                   **params)
    got = explain_lib.explain(method, model, pixels, units, batch_size=3, verbose=0,
                              return_probabilities=True, preprocessing=symmetric, **params)
    assert tf.uint8 in step_dtypes(model)  # the pixels crossed to the step as uint8
    for actual, wanted in zip(got, expected):
        assert actual.dtype == wanted.dtype == np.float32
        assert_float32_close(actual, wanted)
    chosen, logits, maps = explain_lib.explain_predicted(
        method, model, pixels, top_k=2, verbose=0, preprocessing=symmetric, **params)
    reference = explain_lib.explain_predicted(method, model, symmetric_on_host(pixels),
                                              top_k=2, verbose=0, **params)
    np.testing.assert_array_equal(chosen, reference[0])
    assert_float32_close(logits, reference[1])
    assert_float32_close(maps, reference[2])


def test_without_preprocessing_uint8_pixels_are_the_float_pixels(pixels, units):
    model = tiny_cnn(seed=3)
    expected = explain_lib.explain(gradients, model, pixels.astype(np.float32), units,
                                   verbose=0)
    got = explain_lib.explain(gradients, model, pixels, units, verbose=0)
    for actual, wanted in zip(got, expected):  # an exact cast: the same numbers
        np.testing.assert_array_equal(actual, wanted)


def test_two_replicas_shard_uint8_pixels_as_one_device_explains_them(
        pixels, units, mirrored_strategy):
    single = tiny_cnn(seed=6)
    with mirrored_strategy.scope():
        replicated = tiny_cnn(seed=6)
    # 7 samples in batches of 3: shards padded with copies of the last uint8 sample.
    expected = explain_lib.explain(gradients, single, symmetric_on_host(pixels), units,
                                   batch_size=3, verbose=0)
    got = explain_lib.explain(gradients, replicated, pixels, units, batch_size=3, verbose=0,
                              preprocessing=symmetric)
    for actual, wanted in zip(got, expected):
        assert_float32_close(actual, wanted)


@pytest.mark.parametrize("name, params, tolerance", [
    ("deletion", {"n_steps": 4, "baseline": "blur", "blur_sigma": 1.0}, 1e-6),
    ("insertion", {"n_steps": 4, "blur_sigma": 1.0}, 1e-6),
    # A correlation of differences of nearby scores: the pixels' one-ulp differences grow to
    # about 1e-5 of its range on this tiny model.
    ("mufidelity", {"grid_size": 3, "n_samples": 6, "baseline": 0.0}, 1e-4),
    ("model_randomization", {"method": "gradients", "layers": ["logits"]}, 1e-6),
])
@pytest.mark.slow
def test_evaluate_scores_uint8_pixels_as_the_float_path(pixels, units, name, params,
                                                        tolerance):
    model = tiny_cnn(seed=8)
    maps = np.random.default_rng(9).uniform(0, 1, (7, 12, 12, 2)).astype(np.float32)
    given = {} if name == "model_randomization" else {"maps": maps}
    expected = explain_lib.evaluate(name, model, symmetric_on_host(pixels), units, **given,
                                    verbose=0, **params)
    got = explain_lib.evaluate(name, model, pixels, units, **given, verbose=0,
                               preprocessing=symmetric, **params)
    if name == "model_randomization":
        expected, got = (table[["spearman", "ssim"]].to_numpy() for table in (expected, got))
    else:
        dtypes = {key[3][0][1] for key in evaluating._compiled_steps[model]}
        assert tf.uint8 in dtypes
    assert_float32_close(got, expected, tolerance)


def test_the_launchers_check_traces_the_step_uint8_pixels_run(pixels, units):
    model = tiny_cnn(seed=10)
    traces = []

    def counting(model, inputs, indices, **params):
        traces.append(inputs.dtype)  # (Python runs only while tracing)
        return gradients(model, inputs, indices, **params)

    explaining.check_explain(counting, model, (12, 12, 3), units=2, input_dtype="uint8",
                             preprocessing=symmetric)
    assert traces == [tf.float32]  # the method got float inputs: the cast is in the step
    explain_lib.explain(counting, model, pixels, units, verbose=0, preprocessing=symmetric)
    assert traces == [tf.float32], "the checked step is the one the pixels run"


def test_a_preprocessing_that_is_no_function_is_refused_before_any_work(pixels, units):
    model = tiny_cnn(seed=11)
    with pytest.raises(ValueError, match="preprocessing must be a function"):
        explain_lib.explain(gradients, model, pixels, units, preprocessing="unit")
    with pytest.raises(ValueError, match="preprocessing must be a function"):
        explain_lib.evaluate("deletion", model, pixels, units, np.ones((7, 12, 12, 2)),
                             preprocessing="unit")
