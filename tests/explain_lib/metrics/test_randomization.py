"""Model-parameter randomisation: copies re-initialised from the top with each layer's own
initializers, the user's model untouched; a method that passes loses its maps' ranks when
every layer is re-initialised, one that ignores the model keeps them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import methods
from explain_lib.metrics import randomization
from tests.explain_lib.metrics import references


def same_padding_cnn(seed=0, size=32):
    """Convolutions with "same" padding under a global average pooling head: every pixel is
    seen by as many positions, so that gradient magnitudes carry no border pattern that
    any weights would share (with "valid" padding, the border pixels' smaller gradients
    correlate the maps of unrelated models)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(5, name="logits"),
    ])


@pytest.fixture(scope="module")
def model():
    return same_padding_cnn()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (6, 32, 32, 3)).astype("float32")


def batchnorm_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, kernel_initializer=keras.initializers.RandomNormal(0, 0.01),
                            bias_initializer="ones", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="logits"),
    ])
    rng = np.random.default_rng(1)
    for variable in model.weights:  # "trained": nothing left at its initial value
        variable.assign(rng.normal(size=variable.shape).astype("float32") + 3.0)
    return model


def test_copies_redraw_the_named_layers_from_their_own_initializers_and_leave_the_model():
    model = batchnorm_model()
    before = [w.copy() for w in model.get_weights()]
    assert randomization.cascading_layers(model) == ["logits", "bn", "conv"]
    copy = randomization.randomized_copy(model, ["logits", "bn", "conv"], seed=3)
    for original, kept in zip(model.get_weights(), before):
        np.testing.assert_array_equal(original, kept)  # the user's model is untouched
    conv, bn = copy.get_layer("conv"), copy.get_layer("bn")
    assert copy is not model and conv is not model.get_layer("conv")
    np.testing.assert_array_equal(conv.bias.numpy(), 1.0)              # "ones"
    assert 0.004 < conv.kernel.numpy().std() < 0.02                    # RandomNormal(0, 0.01)
    np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
    np.testing.assert_array_equal(bn.beta.numpy(), 0.0)
    # Moving statistics are not trainable: the paper's code leaves them, so does the copy.
    np.testing.assert_array_equal(bn.moving_mean.numpy(), model.get_layer("bn").moving_mean)
    # Seeded: the same seed draws the same weights, another seed others.
    again = randomization.randomized_copy(model, ["logits", "bn", "conv"], seed=3)
    other = randomization.randomized_copy(model, ["logits", "bn", "conv"], seed=4)
    np.testing.assert_array_equal(again.get_layer("conv").kernel, conv.kernel)
    assert not np.array_equal(other.get_layer("conv").kernel, conv.kernel)
    # Only the named layers change.
    top = randomization.randomized_copy(model, ["logits"], seed=3)
    np.testing.assert_array_equal(top.get_layer("conv").kernel, model.get_layer("conv").kernel)
    assert not np.array_equal(top.get_layer("logits").kernel, model.get_layer("logits").kernel)


def test_copies_run_under_the_models_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = same_padding_cnn(size=8)
    copy = randomization.randomized_copy(model, ["logits"], seed=0)
    assert copy.distribute_strategy is mirrored_strategy


@pytest.mark.parametrize("method", ["gradients", "gradcam"])
@pytest.mark.slow
def test_a_fully_reinitialised_model_has_maps_of_unrelated_ranks(model, x, method):
    table = explain_lib.evaluate("model_randomization", model, x, np.arange(6) % 5,
                                 method=method, layers=["conv1"], verbose=0)
    assert list(table.layer.unique()) == ["conv1"] and (table.depth == 3).all()
    assert len(table) == 6
    # Near zero: each image's rank correlation within ±0.3, their mean within ±0.1 (a copy
    # that kept the weights would give exactly 1).
    assert table.spearman.abs().max() < 0.3 and abs(table.spearman.mean()) < 0.1
    assert table.ssim.mean() < 0.4


def test_a_method_that_ignores_the_model_keeps_its_maps_at_every_stage(model, x):
    def brightness(model, inputs, indices, spatial_axis=(-3, -2)):
        logits = tf.gather(model(inputs), indices, batch_dims=1)
        maps = tf.reduce_mean(inputs, axis=-1, keepdims=True)
        return logits, tf.repeat(maps, tf.shape(indices)[1], axis=-1)

    table = explain_lib.evaluate("model_randomization", model, x[:2], [[0, 1], [2, 3]],
                                 method=brightness, verbose=0)
    assert list(table.layer.unique()) == ["logits", "conv2", "conv1"]
    assert list(table.depth.unique()) == [1, 2, 3]
    assert table.unit.tolist() == [0, 1, 2, 3] * 3
    np.testing.assert_allclose(table.spearman, 1.0, atol=1e-6)
    np.testing.assert_allclose(table.ssim, 1.0, atol=1e-5)


def test_the_similarity_is_the_rank_correlation_of_absolute_maps_and_the_ssim_per_unit():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(3, 16, 16, 2)).astype("float32")
    others = maps.copy()
    others[..., 1] = rng.normal(size=(3, 16, 16))
    others[0, :4, :, 1] = 0.0  # ties, which share their mean rank
    rank, structure = randomization.map_similarity(tf.constant(maps), tf.constant(-3 * others))
    for i in range(3):
        for k in range(2):
            expected = references.correlation(np.abs(maps[i, ..., k]).ravel(),
                                              np.abs(others[i, ..., k]).ravel(), "spearman")
            assert abs(rank[i, k] - expected) < 1e-5
    # A map against its own absolute rescaling: rank 1; SSIM compares the min-max
    # normalised maps, so a negated map is another map.
    np.testing.assert_allclose(rank[:, 0], 1.0, atol=1e-6)
    same = randomization.map_similarity(tf.constant(maps), tf.constant(5 * maps + 2))[1]
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    assert np.all(structure.numpy()[:, 1] < 0.5)


def test_bad_requests_are_refused_with_what_to_do(model, x):
    with pytest.raises(ValueError, match="from the top: logits, conv2, conv1; got"):
        explain_lib.evaluate("model_randomization", model, x, [0] * 6, layers=["gap"])
    with pytest.raises(ValueError, match="from the top down"):
        explain_lib.evaluate("model_randomization", model, x, [0] * 6,
                             layers=["conv1", "logits"])
    with pytest.raises(ValueError, match="pass method=..., not maps"):
        explain_lib.evaluate("model_randomization", model, x, [0] * 6, np.zeros((6, 32, 32, 1)))
    with pytest.raises(ValueError, match="Unknown explaining method 'gradcam\\+\\+'"):
        explain_lib.evaluate("model_randomization", model, x, [0] * 6, method="gradcam++")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(keras.ops.mean(inputs, axis=(1, 2)))

    subclassed = Subclassed()
    subclassed(x[:1])
    with pytest.raises(ValueError, match="needs a Functional or Sequential model"):
        randomization.randomized_copy(subclassed, [subclassed.dense.name])


def test_a_registered_method_runs_with_its_conventional_post_processing(model, x):
    function, params = randomization._method_and_defaults("gradcam")
    assert function is methods.gradcam and params == methods.get("gradcam").explain_defaults
    assert randomization._method_and_defaults(methods.gradcam) == (function, params)
