"""CAM methods against their definitions, computed independently on tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import filters, inspection
from explain_lib.engine.explaining import explain
from explain_lib.methods import cams
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import nonlinear_head


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def exposed(model):
    return inspection.expose(model)


@pytest.fixture
def units():
    return np.random.default_rng(2).integers(0, 5, (7, 2)).astype("int32")


@pytest.mark.slow
def test_cam_is_gradcam_times_the_number_of_positions(exposed, images, units):
    keep = {"resizing": False, "verbose": 0}
    logits, cam_maps = explain(cams.cam, exposed, images, units, **keep)
    grad_logits, gradcam_maps = explain(cams.gradcam, exposed, images, units, **keep)
    assert cam_maps.shape == (7, 10, 10, 2)  # conv2 is a valid 3x3 convolution: 10x10
    np.testing.assert_allclose(cam_maps, gradcam_maps * 10 * 10, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits, grad_logits, rtol=1e-6)
    assert np.abs(cam_maps).max() > 1e-2
    # ... and equal after the conventional normalisation, resized to the input.
    _, cam_normal = explain(cams.cam, exposed, images, units, verbose=0,
                            postprocessing=filters.positive_normalize)
    _, gradcam_normal = explain(cams.gradcam, exposed, images, units, verbose=0,
                                postprocessing=filters.positive_normalize)
    assert cam_normal.shape == (7, 12, 12, 2)
    np.testing.assert_allclose(cam_normal, gradcam_normal, atol=1e-5)


def test_cam_of_every_unit_is_the_activation_times_the_kernel(model, exposed, images):
    _, activations = exposed(images)
    kernel = model.get_layer("logits").kernel.numpy()
    _, maps = cams.cam(exposed, tf.constant(images), None)
    np.testing.assert_allclose(maps, np.einsum("bhwc,cu->bhwu", activations, kernel), rtol=1e-4,
                               atol=1e-7)


def test_cam_needs_a_dense_head_on_the_activations(images):
    exposed, *_ = nonlinear_head(input_shape=(12, 12, 3))  # the kernel reads 5 channels, not 4
    with pytest.raises(ValueError, match="global-average-pooling"):
        cams.cam(exposed, tf.constant(images), None)


def headed(*head_layers, seed=0):
    """tiny_cnn's convolutions, then `head_layers`, then a Dense logits layer."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        *head_layers,
        keras.layers.Dense(5, name="logits"),
    ])


@pytest.mark.parametrize("pooled, found", [
    ([keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.LayerNormalization(
        name="norm")], "'norm' (LayerNormalization) between 'gap' and 'logits'"),
    ([keras.layers.GlobalMaxPooling2D(name="gmp")], "'gmp' (GlobalMaxPooling2D)"),
])
def test_cam_refuses_a_head_whose_pooled_features_are_not_its_logits_inputs(
        images, units, pooled, found):
    """ConvNeXt's head normalizes the pooled features, and max pooling is not CAM's mean:
    the kernel's weights do not make the activations the logit. The refusal, raised while the
    step is traced, reaches the caller as one message (not AutoGraph's listing of frames)."""
    with pytest.raises(ValueError) as raised:
        explain(cams.cam, inspection.expose(headed(*pooled)), images, units, verbose=0)
    assert str(raised.value) == (
        "CAM weighs activations by the logits layer's kernel, which is their logit in a head "
        f"of global average pooling then Dense only; this model's head has {found}: explain "
        "it with gradcam (or another CAM method).")


def test_cam_passes_over_dropout_between_the_pooling_and_the_logits(images, units):
    exposed = inspection.expose(headed(keras.layers.GlobalAveragePooling2D(name="gap"),
                                       keras.layers.Dropout(0.5)))
    keep = {"resizing": False, "verbose": 0}
    _, cam_maps = explain(cams.cam, exposed, images, units, **keep)
    _, gradcam_maps = explain(cams.gradcam, exposed, images, units, **keep)
    np.testing.assert_allclose(cam_maps, gradcam_maps * 10 * 10, rtol=1e-4,
                               atol=1e-6 * np.abs(cam_maps).max())


@pytest.fixture(scope="module")
def head():
    return nonlinear_head()


def reference_gradients(head, x, units):
    """dlogit_u/dA for the head ReLU(A W1 + b1) -> mean -> W2, in numpy: (B, h, w, C, K)."""
    _, features, w1, b1, w2 = head
    a = features.predict(x, verbose=0)
    active = (np.einsum("bhwc,cd->bhwd", a, w1) + b1 > 0).astype("float32")
    positions = a.shape[1] * a.shape[2]
    per_unit = np.einsum("cd,bhwd,du->bhwcu", w1, active, w2) / positions
    return a, np.take_along_axis(per_unit, units[:, None, None, None, :], axis=-1)


@pytest.fixture
def x8():
    return np.random.default_rng(9).uniform(0, 1, (4, 8, 8, 3)).astype("float32")


@pytest.fixture
def head_units():
    return np.array([[0, 1], [2, 2], [1, 0], [2, 0]], "int32")


def test_gradcam_matches_its_formula(head, x8, head_units):
    a, g = reference_gradients(head, x8, head_units)
    _, maps = explain(cams.gradcam, head[0], x8, head_units, verbose=0, resizing=False)
    expected = np.einsum("bck,bhwc->bhwk", g.mean(axis=(1, 2)), a)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_gradcampp_matches_its_formula(head, x8, head_units):
    a, g = reference_gradients(head, x8, head_units)
    _, maps = explain(cams.gradcampp, head[0], x8, head_units, verbose=0, resizing=False)
    sums = a.sum(axis=(1, 2))[:, None, None, :, None]  # (B, 1, 1, C, 1)
    denominator = 2 * g**2 + sums * g**3
    alphas = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
    weights = (alphas * np.maximum(g, 0)).sum(axis=(1, 2))  # (B, C, K)
    expected = np.einsum("bck,bhwc->bhwk", weights, a)
    assert np.abs(g).std(axis=(1, 2)).max() > 0, "the gradient must vary over positions"
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_layercam_matches_its_formula(head, x8, head_units):
    a, g = reference_gradients(head, x8, head_units)
    _, maps = explain(cams.layercam, head[0], x8, head_units, verbose=0, resizing=False)
    expected = np.einsum("bhwck,bhwc->bhwk", np.maximum(g, 0), a)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def naive_scorecam(exposed, x, units, channels=None, score="probability", skip_constant=True):
    """Score-CAM as its official code computes it, one forward pass per channel and per
    sample: each channel upsampled to the input (bilinear), skipped when constant, min-max
    normalised, used as a mask; the channel weighted by the softmax probability of the unit
    for the masked input. Returns the weighted sum of the upsampled channels (before the
    final ReLU and normalisation), (B, H, W, K)."""
    _, activations = exposed(x)
    activations = activations.numpy()
    size = x.shape[1:3]
    maps = np.zeros((len(x), *size, units.shape[1]), "float64")
    for b in range(len(x)):
        kept = range(activations.shape[-1]) if channels is None else channels[b]
        for c in kept:
            upsampled = tf.image.resize(activations[b, :, :, c, None], size).numpy()[..., 0]
            span = upsampled.max() - upsampled.min()
            if span == 0 and skip_constant:
                continue
            mask = (upsampled - upsampled.min()) / span if span > 0 else np.zeros_like(upsampled)
            logits, _ = exposed(x[b:b + 1] * mask[None, :, :, None])
            scores = logits.numpy()[0]
            scores = softmax(scores) if score == "probability" else scores
            maps[b] += upsampled[..., None] * scores[units[b]]
    return maps


def test_the_model_spreads_its_probability_over_several_units(exposed, images):
    # Otherwise softmax weights and logit weights would rank channels alike.
    logits, _ = exposed(images)
    probabilities = softmax(logits.numpy())
    assert (probabilities > 0.05).sum(axis=1).min() >= 3, probabilities


@pytest.mark.slow
def test_scorecam_equals_the_official_per_channel_computation(exposed, images, units):
    # 8 channels in chunks of 3: chunks of 3, 3 and 2. The maps are resized to the input
    # (bilinear interpolation is linear, so the weighted sum of upsampled channels is the
    # upsampled weighted sum), no post-processing.
    _, maps = explain(cams.scorecam, exposed, images, units, verbose=0, chunk_size=3)
    expected = naive_scorecam(exposed, images, units)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # Weighing by the raw logit (the library's former default) gives other maps...
    by_logit = naive_scorecam(exposed, images, units, score="logit")
    assert np.abs(by_logit - expected).max() > 0.1 * np.abs(expected).max()
    # ... which score="logit" computes.
    _, logit_maps = explain(cams.scorecam, exposed, images, units, verbose=0, chunk_size=3,
                            score="logit")
    np.testing.assert_allclose(logit_maps, by_logit, rtol=1e-4,
                               atol=1e-5 * np.abs(by_logit).max())


def test_faster_scorecam_scores_the_channels_of_highest_variance(exposed, images, units):
    _, activations = exposed(images)
    top = np.argsort(-activations.numpy().var(axis=(1, 2)), axis=-1)[:, :3]
    _, maps = explain(cams.scorecam, exposed, images, units, verbose=0, chunk_size=2,
                      max_channels=3)
    expected = naive_scorecam(exposed, images, units, channels=top)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_scorecam_skips_constant_channels_as_the_official_code_does(images):
    # Channel 3 of the exposed activation is 2 everywhere (a zero kernel, a bias of 2).
    inputs = keras.Input((12, 12, 3))
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="features")
    features = conv(inputs)
    logits = keras.layers.Dense(5, name="logits")(keras.layers.GlobalAveragePooling2D()(features))
    exposed = keras.Model(inputs, [logits, features])
    kernel, bias = conv.get_weights()
    kernel[..., 3], bias[3] = 0.0, 2.0
    conv.set_weights([kernel, bias])
    units = np.array([[0, 4]] * len(images), "int32")
    _, maps = explain(cams.scorecam, exposed, images, units, verbose=0)
    skipped = naive_scorecam(exposed, images, units)
    counted = naive_scorecam(exposed, images, units, skip_constant=False)
    np.testing.assert_allclose(maps, skipped, rtol=1e-4, atol=1e-5 * np.abs(skipped).max())
    assert np.abs(counted - skipped).max() > 0.1 * np.abs(skipped).max()


def test_cam_methods_ask_for_an_exposed_model(images):
    three_outputs = inspection.expose(tiny_cnn(), ["conv1", "conv2"])
    with pytest.raises(ValueError, match=r"returns 3 output\(s\).*inspection.expose"):
        cams.gradcam(three_outputs, tf.constant(images), None)


@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcampp", "layercam", "scorecam",
                                  "xgradcam", "hirescam", "eigencam", "ablationcam"])
@pytest.mark.slow
def test_a_plain_model_is_exposed_with_the_defaults(model, exposed, images, units, name):
    import explain_lib

    shortcut = getattr(explain_lib, name)
    expected = shortcut(exposed, images, units, verbose=0)
    got = shortcut(model, images, units, verbose=0)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)
    assert not any("expose" in key for key in vars(model))


def test_cam_finds_its_logits_layer_by_name_inside_an_exposed_model(exposed, images, units):
    _, expected = explain(cams.cam, exposed, images, units, verbose=0)
    _, named = explain(cams.cam, exposed, images, units, verbose=0, logits_layer="logits")
    np.testing.assert_allclose(named, expected, rtol=1e-6)


# --- XGrad-CAM, HiResCAM, EigenCAM, Ablation-CAM ---------------------------------------------


@pytest.mark.slow
def test_xgradcam_matches_its_formula(head, x8, head_units):
    a, g = reference_gradients(head, x8, head_units)
    _, maps = explain(cams.xgradcam, head[0], x8, head_units, verbose=0, resizing=False)
    sums = a.sum(axis=(1, 2))[:, None, None, :, None]  # (B, 1, 1, C, 1)
    shares = np.divide(a[..., None], sums, out=np.zeros_like(g), where=sums != 0)
    weights = (shares * g).sum(axis=(1, 2))  # (B, C, K)
    expected = np.einsum("bck,bhwc->bhwk", weights, a)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    # Not Grad-CAM: the gradient varies over positions here.
    _, gradcam_maps = explain(cams.gradcam, head[0], x8, head_units, verbose=0, resizing=False)
    assert np.abs(maps - gradcam_maps).max() > 1e-3 * np.abs(maps).max()


def test_hirescam_matches_its_formula(head, x8, head_units):
    a, g = reference_gradients(head, x8, head_units)
    _, maps = explain(cams.hirescam, head[0], x8, head_units, verbose=0, resizing=False)
    np.testing.assert_allclose(maps, np.einsum("bhwck,bhwc->bhwk", g, a), rtol=1e-4,
                               atol=1e-6)


def test_hirescam_is_gradcam_on_a_global_average_pooling_linear_head(exposed, images, units):
    """The paper's proof: where ∂f/∂A_c = w_c / (h·w) at every position, the gradient's mean
    is the gradient, so the two maps are equal (no factor: both carry 1 / (h·w))."""
    hires = cams.hirescam(exposed, tf.constant(images), tf.constant(units))[1].numpy()
    grad = cams.gradcam(exposed, tf.constant(images), tf.constant(units))[1].numpy()
    assert np.abs(hires).max() > 1e-3
    np.testing.assert_allclose(hires, grad, rtol=1e-5, atol=1e-6 * np.abs(grad).max())


def eigencam_reference(activations):
    """pytorch-grad-cam's get_2d_projection (channels centred over positions, numpy's SVD),
    with the sign that correlates with the activation summed over channels: (B, h, w)."""
    maps = []
    for a in activations.astype("float64"):
        flat = a.reshape(-1, a.shape[-1])
        centred = flat - flat.mean(axis=0)
        projection = centred @ np.linalg.svd(centred, full_matrices=True)[2][0]
        total = flat.sum(axis=1)
        if projection @ (total - total.mean()) < 0:
            projection = -projection
        maps.append(projection.reshape(a.shape[:-1]))
    return np.stack(maps)


def test_eigencam_is_the_projection_on_the_first_principal_component(exposed, images, units):
    _, activations = exposed(images)
    logits, maps = cams.eigencam(exposed, tf.constant(images), tf.constant(units))
    expected = eigencam_reference(activations.numpy())
    assert maps.shape == (7, 10, 10, 2) and logits.shape == (7, 2)
    for k in range(2):  # class-agnostic: the same map for each unit
        np.testing.assert_allclose(maps[..., k], expected, rtol=1e-3,
                                   atol=1e-4 * np.abs(expected).max())


def test_ablationcam_on_a_pooled_linear_head_weighs_by_the_kernel_times_the_mean(
        model, exposed, images, units):
    """y - y_k = w_ku · mean_hw(A_k) exactly when the head is GAP + Dense."""
    logits, activations = (t.numpy() for t in exposed(images))
    kernel = model.get_layer("logits").kernel.numpy()  # (C, U)
    _, maps = cams.ablationcam(exposed, tf.constant(images), tf.constant(units), chunk_size=3)
    y = np.take_along_axis(logits, units, axis=1)  # (B, K)
    drops = activations.mean(axis=(1, 2))[:, :, None] * kernel[:, units].transpose(1, 0, 2)
    expected = np.einsum("bck,bhwc->bhwk", drops / y[:, None, :], activations)
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
def test_ablationcam_runs_the_rest_of_the_network_with_each_channel_zeroed(images):
    """A non-linear rest (1x1 convolution, ReLU, pooling, Dense), against a loop that zeroes
    one channel at a time and runs it; 6 channels in chunks of 4."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    features = keras.layers.Conv2D(6, 3, activation="relu", name="features")(inputs)
    mixer = keras.layers.Conv2D(5, 1, activation="relu", bias_initializer="random_normal")
    dense = keras.layers.Dense(4, bias_initializer="random_normal")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(mixer(features))))
    exposed = inspection.expose(model, "features")
    units = np.arange(14).reshape(7, 2) % 4
    logits, activations = (t.numpy() for t in exposed(images))
    w1, b1 = mixer.kernel.numpy()[0, 0], mixer.bias.numpy()
    w2, b2 = dense.kernel.numpy(), dense.bias.numpy()

    def rest(a):
        return np.maximum(a @ w1 + b1, 0).mean(axis=(1, 2)) @ w2 + b2

    np.testing.assert_allclose(rest(activations), logits, rtol=1e-4, atol=1e-5)
    y = np.take_along_axis(logits, units, axis=1)
    weights = []
    for c in range(6):
        ablated = activations.copy()
        ablated[..., c] = 0
        weights.append((y - np.take_along_axis(rest(ablated), units, axis=1)) / y)
    expected = np.einsum("cbk,bhwc->bhwk", np.array(weights), activations)
    _, maps = explain(cams.ablationcam, exposed, images, units, verbose=0, resizing=False,
                      chunk_size=4)
    assert np.abs(np.array(weights)).max() > 1e-3
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_ablationcam_needs_an_exposed_model_built_by_expose(images):
    exposed, *_ = nonlinear_head(input_shape=(12, 12, 3))  # keras.Model(x, [logits, A])
    with pytest.raises(ValueError, match="not built by explain_lib.inspection.expose"):
        cams.ablationcam(exposed, tf.constant(images), None)
