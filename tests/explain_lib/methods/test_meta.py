"""Meta methods: identities with their base method, statistics of the noisy copies, the
augmentations of TTA, composition."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from explain_lib import inspection, utils
from explain_lib.engine.explaining import explain
from explain_lib.methods import cams, common, gradient, meta, perturbation
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import linear_model

GRADIENTS_SIGNED = functools.partial(gradient.gradients, gradient_filter="identity")


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def exposed():
    # Any input size, for TTA's rescaled inputs.
    return inspection.expose(tiny_cnn(input_shape=(None, None, 3)))


@pytest.fixture
def units():
    return np.random.default_rng(2).integers(0, 5, (7, 2)).astype("int32")


@pytest.mark.parametrize("name", ["gradients", "gradcam"])
@pytest.mark.slow
def test_smooth_without_noise_is_its_base_method(model, exposed, images, units, name):
    base = {"gradients": (gradient.gradients, model), "gradcam": (cams.gradcam, exposed)}
    method, target = base[name]
    expected = explain(method, target, images, units, verbose=0)
    got = explain(meta.smooth(method, repetitions=3, noise=0.0, noise_chunk_size=2), target, images,
                  units, verbose=0)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-7)


def test_tta_without_augmentations_is_its_base_method(exposed, images, units):
    expected = explain(cams.gradcam, exposed, images, units, verbose=0, resizing=False)
    got = explain(meta.tta(cams.gradcam, scales=(), hflip=False), exposed, images, units,
                  verbose=0, resizing=False)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


def test_tta_maps_each_augmentation_back_to_the_input_frame(exposed, images, units):
    x, y = tf.constant(images), tf.constant(units)

    def back(maps, flipped):  # to the frame of the un-augmented map, 10x10
        return utils.resize(maps[:, :, ::-1] if flipped else maps, (10, 10))

    logits, maps = cams.gradcam(exposed, x, y)
    flip_logits, flip_maps = cams.gradcam(exposed, x[:, :, ::-1], y)
    big_logits, big_maps = cams.gradcam(exposed, utils.resize(x, (24, 24)), y)
    big_flip_logits, big_flip_maps = cams.gradcam(exposed, utils.resize(x[:, :, ::-1], (24, 24)), y)
    assert big_maps.shape[1:3] == (22, 22)
    assert np.abs(back(flip_maps, True) - maps).max() > 1e-3, "mirroring must matter here"

    got_logits, got_maps = meta.tta(cams.gradcam, scales=(2.0,), hflip=False)(exposed, x, y)
    np.testing.assert_allclose(got_maps, (maps + back(big_maps, False)) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_logits, (logits + big_logits) / 2, rtol=1e-5)

    got_logits, got_maps = meta.tta(cams.gradcam, scales=(2.0,), hflip=True)(exposed, x, y)
    expected = (maps + back(flip_maps, True) + back(big_maps, False) + back(big_flip_maps, True))
    np.testing.assert_allclose(got_maps, expected / 4, rtol=1e-5, atol=1e-7)
    expected = logits + flip_logits + big_logits + big_flip_logits
    np.testing.assert_allclose(got_logits, expected / 4, rtol=1e-5)


@pytest.mark.slow
def test_noisy_copies_do_not_depend_on_the_chunk_size_or_the_batch(model, images, units):
    whole = explain(meta.smooth(gradient.gradients, repetitions=5, noise=0.2, noise_chunk_size=5),
                    model, images, units, verbose=0)
    chunked = explain(meta.smooth(gradient.gradients, repetitions=5, noise=0.2, noise_chunk_size=2),
                      model, images, units, verbose=0, batch_size=3)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    noiseless = explain(gradient.gradients, model, images, units, verbose=0)
    assert np.abs(whole[1] - noiseless[1]).max() > 1e-4, "noise=0.2 must change the maps"


@pytest.mark.slow
def test_squaregrad_is_vargrad_plus_smooth_squared(model, images, units):
    settings = {"repetitions": 5, "noise": 0.3, "noise_chunk_size": 2}
    mean = explain(meta.smooth(GRADIENTS_SIGNED, **settings), model, images, units, verbose=0)[1]
    variance = explain(meta.vargrad(GRADIENTS_SIGNED, **settings), model, images, units,
                       verbose=0)[1]
    square = explain(meta.squaregrad(GRADIENTS_SIGNED, **settings), model, images, units,
                     verbose=0)[1]
    assert variance.min() >= 0 and variance.max() > 0
    np.testing.assert_allclose(square, variance + mean**2, rtol=1e-3, atol=1e-10)


def test_vargrad_of_a_linear_attribution_is_the_noise_variance():
    # input_x_gradient of a linear model is sum_c W_c (x_c + e_c), e ~ N(0, s^2) with
    # s = noise * (max(x) - min(x)): its variance is s^2 sum_c W_c^2.
    model, kernel = linear_model()
    x = np.random.default_rng(11).uniform(-1, 2, (2, 8, 8, 3)).astype("float32")
    units = np.array([[1], [3]], "int32")
    noise = 0.1
    _, maps = explain(meta.vargrad(gradient.input_x_gradient, repetitions=400, noise=noise,
                                   noise_chunk_size=100), model, x, units, verbose=0)
    spread = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
    expected = (noise * spread[:, None, None, None]) ** 2 * np.moveaxis(
        (kernel[..., units[:, 0]] ** 2).sum(axis=2), -1, 0
    )[..., None]
    ratio = maps / expected
    assert abs(ratio.mean() - 1) < 0.05, ratio.mean()
    assert np.abs(ratio - 1).max() < 0.5


@pytest.mark.slow
def test_meta_methods_compose(exposed, images, units):
    base = meta.tta(cams.gradcam, scales=(1.5,))
    expected = explain(base, exposed, images, units, verbose=0)
    got = explain(meta.smooth(base, repetitions=2, noise=0.0), exposed, images, units, verbose=0)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-6)


def test_meta_methods_reject_bad_settings():
    with pytest.raises(ValueError, match="repetitions"):
        meta.smooth(gradient.gradients, repetitions=0)
    with pytest.raises(ValueError, match="noise"):
        meta.vargrad(gradient.gradients, noise=-1.0)


@pytest.mark.slow
def test_a_meta_method_takes_its_own_parameters_and_its_base_methods_at_call_time(model, images,
                                                                                   units):
    smoothgrad = meta.smooth(gradient.gradients, repetitions=4, noise=0.2, noise_chunk_size=2)
    # Its signature lists its own parameters (the given values are the defaults), then the
    # base method's: that is what explain checks names against and the registry reads.
    parameters, open_ended = common.parameters_of(smoothgrad)
    assert parameters == {"repetitions": 4, "noise": 0.2, "noise_chunk_size": 2, "noise_seed": 0,
                          "gradient_filter": "abs"} and not open_ended
    default = explain(smoothgrad, model, images, units, verbose=0)[1]
    given = explain(meta.smooth(gradient.gradients, repetitions=6, noise=0.2,
                                noise_chunk_size=2), model, images, units, verbose=0)[1]
    at_call = explain(smoothgrad, model, images, units, verbose=0, repetitions=6)[1]
    np.testing.assert_allclose(at_call, given, rtol=1e-5, atol=1e-7)
    assert np.abs(at_call - default).max() > 1e-4 * np.abs(default).max()
    # The base method's parameter reaches the base method.
    squared = explain(smoothgrad, model, images, units, verbose=0, gradient_filter="square")[1]
    expected = explain(meta.smooth(functools.partial(gradient.gradients,
                                                     gradient_filter="square"),
                                   repetitions=4, noise=0.2, noise_chunk_size=2),
                       model, images, units, verbose=0)[1]
    np.testing.assert_allclose(squared, expected, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="repetitions >= 1"):
        explain(smoothgrad, model, images, units, verbose=0, repetitions=0)


def test_tta_takes_its_own_parameters_at_call_time(exposed, images, units):
    method = meta.tta(cams.gradcam)
    plain = explain(cams.gradcam, exposed, images, units, verbose=0, resizing=False)
    none = explain(method, exposed, images, units, verbose=0, resizing=False, scales=(),
                   hflip=False)
    np.testing.assert_allclose(none[1], plain[1], rtol=1e-6)
    flipped = explain(method, exposed, images, units, verbose=0, resizing=False, scales=())
    assert np.abs(flipped[1] - plain[1]).max() > 1e-3 * np.abs(plain[1]).max()


def test_a_meta_method_refuses_a_base_method_with_a_parameter_of_its_own_name():
    def noisy(model, inputs, indices=None, spatial_axis=(-3, -2), noise=1.0):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="smooth cannot wrap noisy: its parameter.s. noise"):
        meta.smooth(noisy)
    # Distinct names let a meta method wrap a method with a chunk size and a seed of its own.
    composed = common.parameters_of(meta.smooth(perturbation.rise))[0]
    assert {"noise_chunk_size", "noise_seed", "chunk_size", "seed"} <= set(composed)
