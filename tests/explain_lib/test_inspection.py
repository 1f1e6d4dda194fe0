"""Inspection on Keras 3: exposing layers of flat, nested and keras.applications models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import inspection
from tests.conftest import tiny_cnn

X = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype("float32")


def backbone():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
            keras.layers.Conv2D(5, 3, activation="relu", name="c2"),
        ],
        name="base",
    )


def inner(model, layer_name, inputs):
    """A layer's output computed through a separate model of the backbone alone."""
    return keras.Model(model.inputs[0], model.get_layer(layer_name).output)(inputs).numpy()


def test_expose_defaults_to_logits_and_the_input_of_global_pooling():
    model = tiny_cnn(input_shape=(16, 16, 3))
    logits, activations = inspection.expose(model)(X)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(activations, inner(model, "conv2", X), rtol=1e-5, atol=1e-6)


def test_transfer_learning_sequential_with_a_nested_base():
    base = backbone()
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, name="head")])
    assert inspection.get_logits_layer(model).name == "head"
    logits, activations = inspection.expose(model)(X)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(activations, base(X), rtol=1e-5, atol=1e-6)
    # A layer inside the nested base, by path.
    logits, c1 = inspection.expose(model, ("base", "c1"))(X)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c1, inner(base, "c1", X), rtol=1e-5, atol=1e-6)


def test_functional_model_wrapping_a_nested_base_with_preprocessing():
    base = backbone()
    inputs = keras.Input((16, 16, 3))
    features = base(keras.layers.Rescaling(2.0, offset=-1.0)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dropout(0.5)(pooled)))
    exposed = inspection.expose(model, {"name": ("base", "c1"), "link": "output"})
    logits, c1 = exposed(X)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c1, inner(base, "c1", 2 * X - 1), rtol=1e-5, atol=1e-6)
    # The exposed model shares the weights: changing one changes the other.
    base.get_layer("c1").kernel.assign(base.get_layer("c1").kernel * 2)
    np.testing.assert_allclose(exposed(X)[0], model(X), rtol=1e-5, atol=1e-6)


def test_expose_several_arguments_and_endpoints_on_given_inputs():
    model = tiny_cnn(input_shape=(16, 16, 3))
    exposed = inspection.expose(model, ["conv1", {"name": "conv2", "link": "input"}], "logits")
    logits, conv1, conv2_in = exposed(X)
    np.testing.assert_allclose(conv1, inner(model, "conv1", X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conv2_in, inner(model, "bn", X), rtol=1e-5, atol=1e-6)
    inputs = keras.Input((16, 16, 3))
    tensors = inspection.endpoints(model, ["logits", 0], inputs)
    logits, first = keras.Model(inputs, tensors)(X)
    np.testing.assert_allclose(first, inner(model, "conv1", X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "application, channels",
    [
        (keras.applications.ResNet50V2, 2048),
        (keras.applications.MobileNetV2, 1280),
        (keras.applications.EfficientNetB0, 1280),
    ],
)
@pytest.mark.slow
def test_keras_applications(application, channels):
    model = application(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    images = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    logits, activations = inspection.expose(model)(images)
    assert activations.shape == (1, 2, 2, channels)
    np.testing.assert_allclose(logits, model(images), rtol=1e-4, atol=1e-4)
    layers, biases = inspection.layers_with_biases(model)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    assert all(b.shape[-1] == layer.output.shape[-1] for layer, b in zip(layers, biases))


def test_errors_list_candidates():
    no_pooling = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    expected = r"No layer with type Flatten.*Its layers are: d \(Dense\)"
    with pytest.raises(ValueError, match=expected):
        inspection.get_global_pooling_layer(no_pooling)
    no_kernel = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match=r"No layer with attributes \['kernel'\].*Name the layer"):
        inspection.get_logits_layer(no_kernel)
    with pytest.raises(ValueError, match=r"No layer named 'c9'.*Its layers are: c1, c2"):
        inspection.get_nested_layer(keras.Sequential([backbone()]), ("base", "c9"))
    with pytest.raises(ValueError, match="needs a name, properties or klass"):
        inspection.find_layer_with(no_pooling)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3)
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(self.pool(self.conv(x)))

    subclassed = Subclassed()
    subclassed(X)
    with pytest.raises(ValueError, match="only Functional and Sequential"):
        inspection.expose(subclassed, {"layer": subclassed.pool, "link": "input"},
                          {"layer": subclassed.dense})


def test_gather_units():
    logits = tf.constant([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])
    np.testing.assert_array_equal(inspection.gather_units(logits, [[2, 0], [1, 1]]),
                                  [[2.0, 0.0], [11.0, 11.0]])
    assert inspection.gather_units(logits, None) is logits


def test_batch_normalization_implicit_bias_is_its_output_at_zero():
    model = tiny_cnn()
    layers, biases = inspection.layers_with_biases(model, exclude=[model.get_layer("logits")])
    assert [layer.name for layer in layers] == ["conv1", "bn", "conv2"]
    bn = model.get_layer("bn")
    at_zero = bn(tf.zeros((1, 1, 1, 6)), training=False).numpy()[0, 0, 0]
    np.testing.assert_allclose(biases[1], at_zero, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(biases[0], model.get_layer("conv1").bias.numpy())
    assert inspection.layers_with_biases(model, return_biases=False) == layers + [
        model.get_layer("logits")]


def test_an_endpoint_named_twice_gives_the_same_tensor_twice():
    model = tiny_cnn(input_shape=(16, 16, 3))
    # [*outputs, *arguments]: the logits layer is both an output and an argument.
    logits, conv1, logits_again, conv1_again = inspection.expose(
        model, ["conv1", "logits", {"name": "conv1"}], "logits")(X)
    np.testing.assert_allclose(logits, model(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conv1, inner(model, "conv1", X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logits_again, logits)
    np.testing.assert_array_equal(conv1_again, conv1)


# --- rerouted and channel-scaled models -------------------------------------------------------


def nested_backbone_model(seed=0):
    """Sequential([a nested backbone ending in a ReLU convolution, GAP, Dense])."""
    keras.utils.set_random_seed(seed)
    base = keras.Sequential([keras.Input((8, 8, 3)),
                             keras.layers.Conv2D(4, 3, activation="relu", name="features")],
                            name="base")
    return keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, bias_initializer="random_normal",
                                                name="head")])


def test_channel_scaled_scales_the_activation_where_the_model_reads_it():
    model = nested_backbone_model()
    exposed = inspection.expose(model, ("base", "features"))
    scaled = inspection.channel_scaled(exposed)
    assert inspection.channel_scaled(exposed) is scaled  # built once
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype("float32")
    keep = np.random.default_rng(1).uniform(0, 2, (3, 4)).astype("float32")
    keep[:, 1] = 0
    logits, activations = (t.numpy() for t in exposed(x))
    scaled_logits, scaled_activations = (t.numpy() for t in scaled([x, keep]))
    np.testing.assert_allclose(scaled_activations, activations * keep[:, None, None, :],
                               rtol=1e-6)
    head = model.get_layer("head")
    expected = (activations * keep[:, None, None, :]).mean(axis=(1, 2)) @ head.kernel.numpy()
    np.testing.assert_allclose(scaled_logits, expected + head.bias.numpy(), rtol=1e-5,
                               atol=1e-6)
    ones = scaled([x, np.ones_like(keep)])[0].numpy()
    np.testing.assert_allclose(ones, logits, rtol=1e-6, atol=1e-7)
    by_hand = keras.Model(model.inputs, [model.outputs[0], model.outputs[0]])
    with pytest.raises(ValueError, match="not built by explain_lib.inspection.expose"):
        inspection.channel_scaled(by_hand)


def test_rerouted_calls_the_replacement_and_leaves_the_model_alone():
    model = nested_backbone_model()
    features = inspection.get_nested_layer(model, "features")
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    before = model(x).numpy()
    doubled = inspection.rerouted(model, {features: lambda t: 2.0 * features(t)})
    head = model.get_layer("head")
    expected = 2.0 * (before - head.bias.numpy()) + head.bias.numpy()  # linear after features
    np.testing.assert_allclose(keras.tree.flatten(doubled(x))[0].numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(model(x).numpy(), before)
    assert features.activation is keras.activations.relu
