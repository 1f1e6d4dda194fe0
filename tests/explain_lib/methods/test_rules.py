"""Guided backpropagation, DeconvNet and Guided Grad-CAM against their definitions: a numpy
backward pass with each rule on a tiny network holding every kind of ReLU, the plain
gradient where the rules change nothing, Grad-CAM times the guided map; and the user's model
left as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import inspection
from explain_lib.methods import cams, gradient, rules
from explain_lib.utils import ExplainError
from tests.conftest import tiny_cnn

SHAPE = (3, 3, 2)


def relu_mlp(seed=0, max_value=None):
    """Dense layers on the flattened input, with the three kinds of ReLU: a ReLU layer
    (ReLU6 with `max_value=6`), a ReLU fused in a Dense layer and an Activation("relu")."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Dense(6, name="dense1")(keras.layers.Flatten()(inputs))
    x = keras.layers.ReLU(max_value=max_value, name="relu1")(x)
    x = keras.layers.Dense(5, activation="relu", name="dense2",
                           bias_initializer="random_normal")(x)
    x = keras.layers.Activation("relu", name="relu3")(keras.layers.Dense(4, name="dense3")(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def reference(model, x, unit, rule, max_value=np.inf):
    """∂f_unit/∂x with `rule` ("gradient", "guided", "deconvnet") at every ReLU, in numpy:
    (B, *SHAPE)."""
    kernel = {n: model.get_layer(n).kernel.numpy() for n in ("dense1", "dense2", "dense3",
                                                           "logits")}
    bias = {n: model.get_layer(n).bias.numpy() for n in kernel}
    z1 = x.reshape(len(x), -1) @ kernel["dense1"] + bias["dense1"]
    z2 = np.clip(z1, 0, max_value) @ kernel["dense2"] + bias["dense2"]
    z3 = np.maximum(z2, 0) @ kernel["dense3"] + bias["dense3"]

    def backward(g, z, upper=np.inf):
        if rule == "deconvnet":
            return np.maximum(g, 0)  # the sign of the gradient only
        passing = (z > 0) & (z < upper)
        return (np.maximum(g, 0) if rule == "guided" else g) * passing

    g = np.broadcast_to(kernel["logits"][:, unit], z3.shape)
    g = backward(g, z3) @ kernel["dense3"].T
    g = backward(g, z2) @ kernel["dense2"].T
    g = backward(g, z1, max_value) @ kernel["dense1"].T
    return g.reshape(x.shape)


@pytest.fixture
def x():
    # Large enough inputs that some ReLU6 units saturate.
    return np.random.default_rng(0).normal(0, 6, (5, *SHAPE)).astype("float32")


UNITS = np.array([0, 1, 2, 1, 0], "int32")


def run(method, model, x, units, **params):
    """The method's maps, called eagerly (quicker than tracing `explain`'s step here; the
    registry's tests run every method through `explain`, on one and two replicas)."""
    return method(model, tf.constant(x), tf.constant(np.asarray(units)[:, None]),
                  **params)[1].numpy()


@pytest.mark.parametrize("max_value", [None, 6.0])
def test_the_rules_are_the_numpy_backward_pass(x, max_value):
    model = relu_mlp(max_value=max_value)
    upper = np.inf if max_value is None else max_value
    if max_value:
        z1 = x.reshape(len(x), -1) @ model.get_layer("dense1").kernel.numpy()
        assert (z1 > 6).any(), "some ReLU6 units must saturate"
    assert set(rules.relu_layers(model).values()) == {True, False}
    assert len(rules.relu_layers(model)) == 3
    for rule, method in [("gradient", gradient.gradients), ("guided", rules.guided_backprop),
                         ("deconvnet", rules.deconvnet)]:
        maps = run(method, model, x, UNITS, gradient_filter="identity")
        expected = np.stack([reference(model, x[i:i + 1], u, rule, upper)[0]
                             for i, u in enumerate(UNITS)])
        np.testing.assert_allclose(maps[..., 0], expected.mean(-1), rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max(), err_msg=rule)
    # The rules differ from the plain gradient here (negative gradients, closed ReLUs).
    plain = run(gradient.gradients, model, x, UNITS)
    guided = run(rules.guided_backprop, model, x, UNITS)
    assert np.abs(plain - guided).max() > 0.1 * np.abs(plain).max()


def test_deconvnet_sees_only_the_sign_of_the_gradient_and_training_is_seen(x):
    """Changing the biases changes which ReLUs pass, not the weights: DeconvNet's maps stay
    as they were, guided backpropagation's change; both through the cached rerouted model,
    which reads the model's own variables."""
    model = relu_mlp(seed=1)
    deconv = run(rules.deconvnet, model, x, UNITS)
    guided = run(rules.guided_backprop, model, x, UNITS)
    for name in ("dense1", "dense2", "dense3"):
        bias = model.get_layer(name).bias
        bias.assign(bias.numpy() + np.random.default_rng(2).normal(0, 5, bias.shape))
    np.testing.assert_allclose(run(rules.deconvnet, model, x, UNITS), deconv,
                               rtol=1e-5, atol=1e-7)
    changed = run(rules.guided_backprop, model, x, UNITS)
    assert np.abs(changed - guided).max() > 1e-3 * np.abs(guided).max()
    expected = np.stack([reference(model, x[i:i + 1], u, "guided")[0]
                         for i, u in enumerate(UNITS)])
    np.testing.assert_allclose(changed[..., 0], np.abs(expected).mean(-1), rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


POSITIVE = keras.initializers.RandomUniform(0.1, 1.0)


def test_where_every_relu_passes_positive_gradients_the_rules_are_the_gradient():
    """One ReLU whose input is positive everywhere, and positive weights after it: guided
    backpropagation and DeconvNet change nothing."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Flatten(),
        keras.layers.Dense(4, activation="relu", kernel_initializer=POSITIVE,
                           bias_initializer="ones"),
        keras.layers.Dense(3, kernel_initializer=POSITIVE),
    ])
    x = np.random.default_rng(1).uniform(0, 1, (4, *SHAPE)).astype("float32")
    plain = run(gradient.gradients, model, x, UNITS[:4])
    assert np.abs(plain).max() > 1e-2
    for method in (rules.guided_backprop, rules.deconvnet):
        np.testing.assert_allclose(run(method, model, x, UNITS[:4]), plain,
                                   rtol=1e-5, atol=1e-7)


def test_a_model_without_relu_is_refused_clearly(images):
    keras.utils.set_random_seed(0)
    linear = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3),
                               keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    for method in (rules.guided_backprop, rules.deconvnet, rules.guided_gradcam):
        with pytest.raises(ExplainError, match="has no ReLU .* Explain it with gradients"):
            run(method, linear, images, [0] * 7)


@pytest.mark.parametrize("gradient_filter", ["identity", "abs"])
def test_guided_gradcam_is_the_guided_map_times_the_upsampled_gradcam(images, gradient_filter):
    model = tiny_cnn(seed=2)
    exposed = inspection.expose(model)
    units = np.arange(7) % 5
    keep = {"gradient_filter": gradient_filter}
    maps = run(rules.guided_gradcam, exposed, images, units, **keep)
    guided = run(rules.guided_backprop, model, images, units, **keep)
    cam = run(cams.gradcam, exposed, images, units)
    upsampled = tf.image.resize(np.maximum(cam, 0), (12, 12)).numpy()  # bilinear
    assert cam.shape == (7, 10, 10, 1) and maps.shape == (7, 12, 12, 1)
    assert (cam < 0).any() and (cam > 0).any()  # the rectification matters
    np.testing.assert_allclose(maps, guided * upsampled, rtol=1e-4,
                               atol=1e-6 * np.abs(maps).max())
    # A plain model is exposed with the defaults: the same maps.
    np.testing.assert_allclose(run(rules.guided_gradcam, model, images, units, **keep), maps,
                               rtol=1e-5, atol=1e-7)


def _snapshot(model):
    return [(layer, getattr(layer, "activation", None), layer.get_config(),
             [w.numpy().copy() for w in layer.weights]) for layer in model.layers]


def _assert_unchanged(model, before):
    assert [entry[0] for entry in before] == model.layers
    for (layer, activation, config, weights), now in zip(before, model.layers):
        assert getattr(now, "activation", None) is activation, layer.name
        assert now.get_config() == config, layer.name
        for old, new in zip(weights, now.weights):
            np.testing.assert_array_equal(new.numpy(), old)


def _plain_gradient(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x, training=False)[:, 0])
    return tape.gradient(y, x).numpy()


def test_the_users_model_is_left_as_it_was(x):
    model = relu_mlp(seed=4, max_value=6.0)
    before, gradient_before = _snapshot(model), _plain_gradient(model, x)
    for method in (rules.guided_backprop, rules.deconvnet):
        run(method, model, x, UNITS)
    _assert_unchanged(model, before)
    np.testing.assert_array_equal(_plain_gradient(model, x), gradient_before)


@pytest.mark.slow
def test_keras_applications_mobilenetv2_relu6_unchanged(images):
    """keras.applications' MobileNetV2: 35 ReLU6 layers reached, maps finite, the model
    and its gradient as they were."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=5, classifier_activation=None)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    reached = rules.relu_layers(model)
    assert len(reached) == 35 and not any(reached.values())
    assert all(layer.max_value == 6.0 for layer in reached)
    before, gradient_before = _snapshot(model), _plain_gradient(model, x)
    for method in (rules.guided_backprop, rules.deconvnet):
        maps = run(method, model, x, [0, 0], gradient_filter="identity")
        assert maps.shape == (2, 32, 32, 1) and np.isfinite(maps).all()
        assert np.abs(maps).max() > 0
        assert np.abs(maps[..., 0] - gradient_before.mean(-1)).max() > 0
    _assert_unchanged(model, before)
    np.testing.assert_array_equal(_plain_gradient(model, x), gradient_before)


def test_deconvnet_refuses_a_relu_fused_where_its_input_cannot_be_reached(images):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)),
                              keras.layers.DepthwiseConv2D(3, activation="relu", name="dw"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    with pytest.raises(ExplainError, match="fused in 'dw' \\(DepthwiseConv2D\\)"):
        run(rules.deconvnet, model, images, [0] * 7)
    assert run(rules.guided_backprop, model, images, [0] * 7).max() > 0
