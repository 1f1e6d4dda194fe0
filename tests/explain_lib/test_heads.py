"""The models users bring: a classifier ending in a softmax or sigmoid (keras.applications'
default) is explained on its scores before the activation, exactly as the same weights with
a linear head are, whatever the method; its probabilities stay the model's; `scores="output"`
explains the output as it is; a model loaded with Keras' defaults (compiled) and a
subclassed model work where they can, and a CAM method says why it cannot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import filters, inspection, methods
from explain_lib.engine.explaining import explain
from tests.explain_lib.methods.models import FAST_SETTINGS, registered_methods

SIZE = 12
UNITS = 5


def _trunk(seed: int):
    """Input and pooled features of a small CNN (BatchNormalization, two convolutions)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    return inputs, keras.layers.GlobalAveragePooling2D()(x)


def heads(activation: str, units: int = UNITS, seed: int = 0):
    """{head kind: model}: the same trunk and weights with a linear head ("linear"), and
    with the `activation` fused in the Dense ("fused"), as an Activation layer
    ("activation"), and (for softmax) as a Softmax layer ("layer")."""
    inputs, features = _trunk(seed)
    dense = keras.layers.Dense(units, name="scores")
    logits = dense(features)
    models = {
        "linear": keras.Model(inputs, logits),
        "activation": keras.Model(inputs, keras.layers.Activation(activation)(logits)),
    }
    if activation == "softmax":
        models["layer"] = keras.Model(inputs, keras.layers.Softmax()(logits))
    fused = keras.layers.Dense(units, activation=activation)
    models["fused"] = keras.Model(inputs, fused(features))
    fused.set_weights(dense.get_weights())
    return models


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0, 1, (4, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def softmax_heads():
    return heads("softmax")


def test_the_head_is_found_through_the_graph(softmax_heads):
    found = {kind: inspection.find_head(model) for kind, model in softmax_heads.items()}
    assert found["linear"] == inspection.Head(inspection.MODEL_OUTPUT, None)
    assert {kind: head.activation for kind, head in found.items() if kind != "linear"} == {
        "activation": "softmax", "layer": "softmax", "fused": "softmax"}
    assert found["fused"].endpoint["link"] == "pre_activation"
    assert found["activation"].endpoint["link"] == "input"
    # A head ending in a nested model's softmax (a keras.applications model wrapped).
    wrapped = keras.Sequential([keras.Input((SIZE, SIZE, 3)), softmax_heads["fused"]])
    assert inspection.find_head(wrapped).activation == "softmax"


@pytest.mark.parametrize("name", list(registered_methods()))
@pytest.mark.slow
def test_every_method_explains_a_softmax_head_as_the_same_weights_with_a_linear_one(
        softmax_heads, images, name):
    method = methods.get(name).function
    units = np.array([[0, 3], [1, 2], [4, 4], [2, 0]], "int32")
    params = {"verbose": 0, "postprocessing": None, **FAST_SETTINGS.get(name, {})}
    logits, maps, probabilities = explain(method, softmax_heads["linear"], images, units,
                                          return_probabilities=True, **params)
    assert np.abs(maps).max() > 0
    # The logits and probabilities explained are the model's; the maps are the linear head's.
    expected = softmax_heads["fused"].predict(images, verbose=0)
    for kind in ("fused", "activation"):
        got_logits, got_maps, got_probabilities = explain(
            method, softmax_heads[kind], images, units, return_probabilities=True, **params)
        np.testing.assert_allclose(got_maps, maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max())
        np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_probabilities, probabilities, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got_probabilities, np.take_along_axis(expected, units, 1),
                                   rtol=1e-5, atol=1e-7)


def test_a_softmax_head_with_scores_output_is_explained_on_its_probabilities(softmax_heads,
                                                                            images):
    units = np.array([1, 2, 3, 4])
    model = softmax_heads["fused"]
    _, maps = explain(methods.gradients, model, images, units, verbose=0, scores="output")
    with tf.GradientTape() as tape:
        inputs = tf.constant(images)
        tape.watch(inputs)
        probabilities = tf.gather(model(inputs), units, batch_dims=1)
    expected = tf.reduce_mean(tf.abs(tape.gradient(probabilities, inputs)), -1).numpy()
    np.testing.assert_allclose(maps[..., 0], expected, rtol=1e-5, atol=1e-6 * expected.max())
    _, by_default = explain(methods.gradients, model, images, units, verbose=0)
    assert np.abs(by_default - maps).max() > 0.1 * np.abs(maps).max()
    # Its probabilities are its output, not the softmax of it.
    *_, recorded = explain(methods.gradients, model, images, units, verbose=0,
                           scores="output", return_probabilities=True)
    np.testing.assert_allclose(recorded[:, 0], model.predict(images, verbose=0)[range(4), units],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="scores must be one of logits, output, not 'probs'"):
        explain(methods.gradients, model, images, units, verbose=0, scores="probs")


@pytest.mark.slow
def test_a_multi_label_sigmoid_head_keeps_its_per_unit_probabilities(images):
    models = heads("sigmoid")
    units = np.array([[0, 3], [1, 2], [4, 4], [2, 0]], "int32")
    _, maps = explain(methods.gradcam, models["linear"], images, units, verbose=0)
    for kind in ("fused", "activation"):
        *_, got_maps, probabilities = explain(methods.gradcam, models[kind], images, units,
                                              verbose=0, return_probabilities=True)
        np.testing.assert_allclose(got_maps, maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max())
        expected = models[kind].predict(images, verbose=0)  # sigmoid per unit, not a softmax
        np.testing.assert_allclose(probabilities, np.take_along_axis(expected, units, 1),
                                   rtol=1e-5, atol=1e-7)
        assert not np.allclose(expected.sum(-1), 1)


def test_a_softmax_outside_any_layer_is_explained_as_it_is_with_a_warning(softmax_heads, images):
    linear = softmax_heads["linear"]
    model = keras.Model(linear.inputs, keras.ops.softmax(linear.outputs[0]))
    with pytest.warns(UserWarning, match="ends in keras.ops.softmax, an operation outside"):
        _, maps = explain(methods.gradients, model, images, [0, 1, 2, 3], verbose=0)
    _, output = explain(methods.gradients, model, images, [0, 1, 2, 3], verbose=0,
                        scores="output")
    np.testing.assert_array_equal(maps, output)


@pytest.mark.slow
def test_mobilenet_v3_whose_scores_follow_a_flatten_is_explained_by_every_cam():
    """MobileNetV3's head: pooling, two 1x1 convolutions, Flatten, Activation(softmax). The
    logits are the model's output before the softmax (not the last kernel's, (B, 1, 1, U)),
    and CAM weighs the pooling's input (not the Flatten's 1x1 input)."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    softmax = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                                  classes=7)
    keras.utils.set_random_seed(0)
    linear = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3),
                                                 classes=7, classifier_activation=None)
    linear.set_weights(softmax.get_weights())
    # At 64x64 the pooling's input is 2x2; at 32x32 it is 1x1, and CAM weighs the last map
    # with more than one position instead (a constant map would say nothing).
    assert tuple(inspection.expose(keras.applications.MobileNetV3Small(
        weights=None, input_shape=(64, 64, 3), classes=7)).outputs[1].shape[1:]) == (2, 2, 576)
    activations = inspection.expose(softmax).outputs[1]
    assert activations.shape[1] * activations.shape[2] > 1
    for name in ("gradcam", "gradcampp", "layercam", "scorecam"):
        _, maps = explain_lib.shortcuts.SHORTCUTS[name](softmax, x, [3, 5], verbose=0,
                                                        postprocessing=None)
        _, expected = explain_lib.shortcuts.SHORTCUTS[name](linear, x, [3, 5], verbose=0,
                                                            postprocessing=None)
        assert maps.shape == (2, 32, 32, 1) and np.isfinite(maps).all()
        np.testing.assert_allclose(maps, expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max() + 1e-12)


@pytest.fixture(scope="module")
def compiled_and_loaded(tmp_path_factory, images):
    """A model compiled and fitted, saved and loaded with Keras' defaults (compile=True, so
    it holds an optimizer), and the model it was saved from."""
    model = heads("softmax", seed=4)["fused"]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(4) % UNITS, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("compiled") / "model.keras")
    keras.saving.save_model(model, path)
    loaded = keras.saving.load_model(path)
    assert loaded.compiled and loaded.optimizer is not None
    return loaded, model


@pytest.mark.parametrize("name", list(registered_methods()))
@pytest.mark.slow
def test_a_model_loaded_with_keras_defaults_works_in_every_method(compiled_and_loaded, images,
                                                                  name):
    loaded, original = compiled_and_loaded
    params = {"verbose": 0, "postprocessing": None, **FAST_SETTINGS.get(name, {})}
    _, maps = explain(methods.get(name).function, loaded, images, [0, 1, 2, 3], **params)
    _, expected = explain(methods.get(name).function, original, images, [0, 1, 2, 3], **params)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


class Subclassed(keras.Model):
    """A model without a graph: its call is Python."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(6, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(UNITS)

    def call(self, inputs):
        return self.dense(self.pool(self.conv(inputs)))


@pytest.mark.slow
def test_a_subclassed_model_works_with_gradients_and_perturbations_and_cam_says_why_not(images):
    keras.utils.set_random_seed(1)
    model = Subclassed()
    model(images[:1])
    twin = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                             keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(UNITS)])
    twin.set_weights(model.get_weights())
    for name in ("gradients", "integrated_gradients", "smoothgrad", "occlusion", "rise"):
        params = {"verbose": 0, **FAST_SETTINGS.get(name, {})}
        _, maps = explain_lib.shortcuts.SHORTCUTS[name](model, images, [0, 1, 2, 3], **params)
        _, expected = explain_lib.shortcuts.SHORTCUTS[name](twin, images, [0, 1, 2, 3],
                                                            **params)
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
        assert maps.max() > 0
    for name in ("gradcam", "cam", "scorecam"):
        with pytest.raises(ValueError, match="is a subclassed model .Subclassed.: CAM methods "
                           "weigh an inner activation.*gradient or perturbation method"):
            explain_lib.shortcuts.SHORTCUTS[name](model, images, [0, 1, 2, 3], verbose=0)


def test_filters_are_taken_by_name_and_an_unknown_one_is_refused_first(softmax_heads, images):
    model = softmax_heads["linear"]
    _, by_name = explain(methods.gradcam, model, images, [0, 1, 2, 3], verbose=0,
                         postprocessing="positive_normalize")
    _, by_function = explain(methods.gradcam, model, images, [0, 1, 2, 3], verbose=0,
                             postprocessing=filters.positive_normalize)
    np.testing.assert_array_equal(by_name, by_function)
    assert by_name.min() >= 0 and by_name.max() <= 1
    with pytest.raises(ValueError, match="Unknown filter 'blur'; known: normalize"):
        explain(methods.gradcam, model, np.zeros((0, SIZE, SIZE, 3), "float32"), verbose=0,
                postprocessing="blur")  # refused before the (empty) input is looked at
