"""Every method explains the predicted units it chooses from its own forward pass
(`explain_predicted`, `inspection.TopUnits`): the same units as predicting first, the same
maps as explaining those units, on one device and on two replicas; and every method gives
the explained units' probabilities from that same pass (`return_probabilities`,
`inspection.GivenUnits`), equal to the softmax of the model's own prediction."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import inspection
from explain_lib.engine.explaining import explain, explain_predicted
from explain_lib.methods import gradient, meta
from tests.explain_lib.methods.models import (
    FAST_SETTINGS,
    SMOOTH_TTA_GRADCAM,
    on_one_device_and_two_replicas,
    registered_methods,
    rounding_tolerance,
)

CASES = {
    **registered_methods(),
    "smooth_tta_gradcam": SMOOTH_TTA_GRADCAM,
    "tta_gradients": (meta.tta(gradient.gradients, scales=(0.5,)), False),
}


@pytest.fixture(scope="module")
def models(mirrored_strategy):
    return on_one_device_and_two_replicas(mirrored_strategy, seed=8)


@pytest.fixture
def images():
    """Seven images the model predicts different units for (the shared fixture's uniform
    noise gets the same top unit everywhere)."""
    scales = np.linspace(1, 4, 7, dtype="float32")[:, None, None, None]
    return np.random.default_rng(0).normal(0, 1, (7, 12, 12, 3)).astype("float32") * scales


def predicted_units(model, images, k):
    scores = model.predict(images, verbose=0)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype("int32")


def softmax_of(model, images, units):
    """The reference: each unit's softmax probability from `model.predict`."""
    logits = model.predict(images, verbose=0).astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return np.take_along_axis(probabilities, units, axis=1)


# squaregrad is vargrad + smoothgrad² over the same copies and chunks: its mean and variance
# are smoothgrad's and vargrad's cases here.
@pytest.mark.parametrize("name", [n for n in CASES if n != "squaregrad"])
@pytest.mark.slow
def test_the_chosen_units_are_the_predicted_ones_and_explained_as_given(models, images, name):
    method, which = CASES[name]
    params = {"verbose": 0, "batch_size": 3, "resizing": False, **FAST_SETTINGS.get(name, {})}
    expected_units = predicted_units(models[0][0], images, 2)
    assert len(set(expected_units[:, 0])) > 1  # not every image predicts the same unit

    units, logits, maps, probabilities = explain_predicted(
        method, models[0][which], images, top_k=2, return_probabilities=True, **params)
    np.testing.assert_array_equal(units, expected_units)
    given_logits, given_maps, given_probabilities = explain(
        method, models[0][which], images, expected_units, return_probabilities=True, **params)
    np.testing.assert_allclose(logits, given_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, given_maps, rtol=1e-5, atol=rounding_tolerance(name, maps))
    assert np.abs(maps).max() > 0
    # The probabilities at the input, whether the units were chosen or given; the units of
    # the second column differ from the first's, so a mix-up would show.
    reference = softmax_of(models[0][0], images, expected_units)
    np.testing.assert_allclose(probabilities, reference, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(given_probabilities, reference, rtol=1e-5, atol=1e-7)

    # 7 samples in batches of 3 on two replicas: each replica chooses for its own shard.
    units_2, logits_2, maps_2, probabilities_2 = explain_predicted(
        method, models[1][which], images, top_k=2, return_probabilities=True, **params)
    np.testing.assert_array_equal(units_2, expected_units)
    np.testing.assert_allclose(logits_2, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps_2, maps, rtol=1e-4, atol=rounding_tolerance(name, maps))
    np.testing.assert_allclose(probabilities_2, reference, rtol=1e-5, atol=1e-7)


class Counting(keras.layers.Layer):
    """The identity, counting how often it is called (in a compiled step: traced)."""

    calls = 0

    def call(self, inputs):
        Counting.calls += 1
        return inputs


@pytest.mark.parametrize("name", ["gradcam", "gradients", "occlusion"])
@pytest.mark.slow
def test_choosing_the_units_and_their_probabilities_adds_no_forward_pass(images, name):
    model = keras.Sequential([
        keras.Input((12, 12, 3)), Counting(), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5),
    ])
    method, exposed = CASES[name]
    explained = inspection.expose(model) if exposed else model
    params = {"batch_size": 7, "verbose": 0, **FAST_SETTINGS.get(name, {})}

    before = Counting.calls
    explain(method, explained, images, np.zeros(7, "int32"), **params)
    given = Counting.calls - before
    before = Counting.calls
    explain_predicted(method, explained, images, **params)
    assert Counting.calls - before == given >= 1
    for explain_with_probabilities in (
            lambda: explain(method, explained, images, np.ones(7, "int32"),
                            return_probabilities=True, **params),
            lambda: explain_predicted(method, explained, images, return_probabilities=True,
                                      **params)):
        before = Counting.calls
        *_, probabilities = explain_with_probabilities()
        assert Counting.calls - before == given
        assert probabilities.shape == (7, 1) and np.all((probabilities > 0) & (probabilities < 1))


def test_a_method_that_does_not_choose_is_refused(models, images):
    def fixed_units(model, inputs, indices=None, **params):
        return gradient.gradients(model, inputs, tf.zeros((tf.shape(inputs)[0], 1), tf.int32))

    with pytest.raises(ValueError, match="did not choose the units.*select_units"):
        explain_predicted(fixed_units, models[0][0], images, verbose=0)


@pytest.mark.parametrize("top_k, message", [(0, "at least 1"), (6, "exceeds the model's 5")])
def test_top_k_must_fit_the_model(models, images, top_k, message):
    with pytest.raises(ValueError, match=message):
        explain_predicted(gradient.gradients, models[0][0], images, top_k=top_k, verbose=0)


def test_labelled_inputs_are_refused(models, images):
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(7, "int32"))).batch(4)
    with pytest.raises(ValueError, match="chooses the units itself"):
        explain_predicted(gradient.gradients, models[0][0], dataset, verbose=0)


def test_callbacks_receive_the_chosen_units(models, images):
    seen, scored = [], []

    class Record(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            seen.append(logs["units"])
            scored.append(logs["probabilities"])

    units, _, _, probabilities = explain_predicted(
        gradient.gradients, models[0][0], images, batch_size=4, verbose=0,
        callbacks=[Record()], return_probabilities=True)
    np.testing.assert_array_equal(np.concatenate(seen), units)
    np.testing.assert_array_equal(np.concatenate(scored), probabilities)


def test_given_units_in_chunks_keep_their_probabilities(models, images):
    """Every unit explained, 2 per step: the probabilities of each chunk land in their
    columns, and a one-unit model's probability is its sigmoid."""
    logits, maps, probabilities = explain(gradient.gradients, models[0][0], images,
                                          unit_chunk_size=2, verbose=0,
                                          return_probabilities=True)
    assert probabilities.shape == (7, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities,
                               softmax_of(models[0][0], images, np.tile(np.arange(5), (7, 1))),
                               rtol=1e-5, atol=1e-7)
    single = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(),
                               keras.layers.Dense(1)])
    logits, _, probabilities = explain(gradient.gradients, single, images, verbose=0,
                                       return_probabilities=True)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_a_method_that_does_not_score_is_refused_when_probabilities_are_asked(models, images):
    def fixed_units(model, inputs, indices=None, **params):
        return gradient.gradients(model, inputs, tf.zeros((tf.shape(inputs)[0], 1), tf.int32))

    explain(fixed_units, models[0][0], images, np.zeros(7, "int32"), verbose=0)  # works
    with pytest.raises(ValueError, match="GivenUnits selector must call inspection.select_units"):
        explain(fixed_units, models[0][0], images, np.zeros(7, "int32"), verbose=0,
                return_probabilities=True)
