"""Vision transformers in inspection and the CAM methods, on tiny KerasHub classifiers
(random weights, 32x32 images: ViT and DeiT in 8x8 patches, Swin in 4x4 patches merged
once; each has a 4x4 grid of patch tokens where CAM methods weigh them).

- `token_grid` finds where the patch tokens lie (the prefix tokens before them, the grid's
  shape) from the tokens' count and the image's size, and refuses what it cannot tell;
- `expose` returns the model's own logits, and as activations the tokens entering the last
  encoder block (ViT, DeiT) or the final tokens (Swin), on their grid;
- Grad-CAM on those activations is Σ_c mean_hw(∂f_u/∂A_c)·A_c, with the gradient taken
  through an eager re-implementation of the model (embedding, blocks one by one, head), not
  through the library's exposed graph;
- HiResCAM and XGrad-CAM follow their formulas on the same eager gradients, and the model
  Ablation-CAM runs with channels scaled is the eager model with the patch tokens' channels
  scaled (ViT, DeiT);
- every CAM method of the registry explains the three models.
"""

import re

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import inspection, methods, shortcuts
from explain_lib.engine.explaining import explain

# KerasHub's Swin warns on every call that its window attention drops a mask it never had.
pytestmark = pytest.mark.filterwarnings("ignore:Layer 'attn' \\(of type WindowAttention\\)")

IMAGE_SHAPE = (32, 32, 3)
GRID = (4, 4)
UNITS = 5
PREFIX_TOKENS = {"vit": 1, "deit": 2, "swin": 0}


def vit_classifier(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(image_shape=IMAGE_SHAPE, patch_size=8, num_layers=2,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=UNITS)


def deit_classifier(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DeiTBackbone(image_shape=IMAGE_SHAPE, patch_size=8, num_layers=2,
                                             num_heads=2, hidden_dim=16, intermediate_dim=32)
    return keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=UNITS)


def swin_classifier(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.SwinTransformerBackbone(
        image_shape=IMAGE_SHAPE, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4,
        patch_size=4)
    return keras_hub.models.SwinTransformerImageClassifier(backbone=backbone, num_classes=UNITS)


BUILDERS = {"vit": vit_classifier, "deit": deit_classifier, "swin": swin_classifier}


@pytest.fixture(scope="module")
def classifiers():
    return {name: build(seed=5) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def images():
    scales = np.array([0.5, 1.0, 3.0], "float32")[:, None, None, None]
    return np.random.default_rng(3).normal(0, 1, (3, *IMAGE_SHAPE)).astype("float32") * scales


@pytest.fixture(scope="module")
def units():
    """Two different units per image."""
    rng = np.random.default_rng(4)
    return np.stack([rng.permutation(UNITS)[:2] for _ in range(3)]).astype("int32")


# --- token_grid --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, image_size, expected", [
    ((None, 197, 768), (224, 224), (1, (14, 14))),   # ViT-B/16: class token + 14x14
    ((None, 198, 768), (224, 224), (2, (14, 14))),   # DeiT: class and distillation tokens
    ((None, 49, 1024), (224, 224), (0, (7, 7))),     # Swin's final tokens: no prefix
    ((None, 393, 768), (224, 448), (1, (14, 28))),   # a wide image: 14x28 patches of 16
    ((None, 393, 768), (448, 224), (1, (28, 14))),   # a tall one
    ((None, 98, 1024), (224, 448), (0, (7, 14))),    # Swin on a wide image
    ((None, 17, 16), (32, 32), (1, (4, 4))),         # the tiny ViT here
    ((None, 18, 16), (32, 32), (2, (4, 4))),         # the tiny DeiT here
])
def test_token_grid_finds_the_prefix_and_the_grid(shape, image_size, expected):
    assert inspection.token_grid(shape, image_size) == expected


def test_token_grid_takes_the_fewest_prefix_tokens_where_several_splits_fit():
    # 8 patches of a 16x32 image and a class token (1 + 2x4), or 7 prefix tokens and 1x2
    # patches of 16; 17 tokens of 48x48 are 1 + 4x4 or 8 + 3x3: transformers keep few
    # prefix tokens.
    assert inspection.token_grid((None, 9, 16), (16, 32)) == (1, (2, 4))
    assert inspection.token_grid((None, 17, 16), (48, 48)) == (1, (4, 4))
    assert inspection.token_grid((None, 5, 16), (32, 32)) == (1, (2, 2))  # not 4 + 1x1


@pytest.mark.parametrize("shape, image_size", [
    # No square number of patches within MAX_PREFIX_TOKENS of 300.
    ((None, 300, 768), (224, 224)),
    # 14x14 patches, but of a 14x14 grid with 9 prefix tokens: more than MAX_PREFIX_TOKENS.
    ((None, 205, 768), (224, 224)),
])
def test_token_grid_refuses_what_it_cannot_tell_asking_for_the_grid(shape, image_size):
    with pytest.raises(ValueError, match=re.escape("pass grid=(h, w) and prefix_tokens")):
        inspection.token_grid(shape, image_size)


def test_token_grid_honours_a_given_grid_or_prefix_and_refuses_a_wrong_one():
    assert inspection.token_grid((None, 9, 16), (16, 32), prefix_tokens=1) == (1, (2, 4))
    assert inspection.token_grid((None, 9, 16), (16, 32), prefix_tokens=7) == (7, (1, 2))
    assert inspection.token_grid((None, 197, 768), (224, 224), grid=(14, 14)) == (1, (14, 14))
    assert inspection.token_grid((None, 197, 768), (224, 224), grid=(14, 14),
                                 prefix_tokens=1) == (1, (14, 14))
    # A given grid is taken as it is, even of other proportions than the image's.
    assert inspection.token_grid((None, 197, 768), (224, 224), grid=(7, 28)) == (1, (7, 28))
    with pytest.raises(ValueError, match="197 tokens are not 2 prefix tokens and a 14x14 grid"):
        inspection.token_grid((None, 197, 768), (224, 224), grid=(14, 14), prefix_tokens=2)
    with pytest.raises(ValueError, match="197 tokens are not -28 prefix tokens and a 15x15"):
        inspection.token_grid((None, 197, 768), (224, 224), grid=(15, 15))
    with pytest.raises(ValueError, match=r"pass grid=\(h, w\)"):
        inspection.token_grid((None, 197, 768), (224, 224), prefix_tokens=2)
    with pytest.raises(ValueError, match="no known count: pass prefix_tokens with the grid"):
        inspection.token_grid((None, None, 768), (224, 224), grid=(14, 14))


# --- expose ------------------------------------------------------------------------------


def encoder_of(name, model):
    return model.backbone.get_layer(f"{name}_encoder")


def embedded(name, model, images):
    """The tokens the encoder's first block takes, computed eagerly."""
    embedding = model.backbone.get_layer(f"{name}_patching_and_embedding")
    tokens = embedding(images)
    return encoder_of(name, model).dropout(tokens) if name == "vit" else tokens


def run_block(block, tokens):
    outputs = block(tokens)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs  # DeiT: (h, scores)


def last_block_input(name, model, images):
    """The tokens entering the last encoder block (B, T, C), computed eagerly block by block
    from the encoder's public sublayers."""
    tokens = embedded(name, model, images)
    for block in encoder_of(name, model).encoder_layers[:-1]:
        tokens = run_block(block, tokens)
    return tokens


def on_grid(name, tokens):
    """The patch tokens (B, 4, 4, C), row-major, prefix tokens dropped."""
    tokens = np.asarray(tokens)
    return tokens[:, PREFIX_TOKENS[name]:].reshape(len(tokens), *GRID, tokens.shape[-1])


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.slow
def test_expose_gives_the_model_s_logits_and_its_tokens_on_their_grid(classifiers, images,
                                                                      name):
    """The exposed model's logits are the model's own output; its activations are the
    tokens entering the last block (ViT, DeiT) or the final tokens (Swin, the backbone's
    output its head averages), patch tokens only, on their 4x4 grid, row-major."""
    model = classifiers[name]
    logits, activations = inspection.expose(model)(images)
    expected_logits = model(images).numpy()
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-6,
                               atol=1e-6 * np.abs(expected_logits).max())
    channels = 32 if name == "swin" else 16  # Swin merges its patches once, doubling them
    assert activations.shape == (len(images), *GRID, channels)
    tokens = model.backbone(images) if name == "swin" else last_block_input(name, model, images)
    assert tokens.shape[1] == PREFIX_TOKENS[name] + GRID[0] * GRID[1]
    expected = on_grid(name, tokens)
    np.testing.assert_allclose(activations, expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    assert np.ptp(activations) > 0.1


def test_expose_honours_a_given_grid_and_refuses_a_wrong_one(classifiers, images):
    """On the tiny ViT: a given (h, w) lays the same patch tokens out on that grid, grid=None
    keeps every token as it is, and a grid that does not fit the tokens is refused."""
    model = classifiers["vit"]
    tokens = np.asarray(last_block_input("vit", model, images))
    tolerance = {"rtol": 1e-5, "atol": 1e-6 * np.abs(tokens).max()}
    _, default = inspection.expose(model)(images)
    _, given = inspection.expose(model, grid=(4, 4), prefix_tokens=1)(images)
    np.testing.assert_allclose(given, default, **tolerance)
    logits, wide = inspection.expose(model, grid=(2, 8))(images)
    assert wide.shape == (len(images), 2, 8, 16)
    np.testing.assert_allclose(wide, tokens[:, 1:].reshape(-1, 2, 8, 16), **tolerance)
    np.testing.assert_allclose(logits, model(images), rtol=1e-6, atol=1e-6)
    _, kept = inspection.expose(model, grid=None)(images)
    np.testing.assert_allclose(kept, tokens, **tolerance)
    with pytest.raises(ValueError, match="17 tokens are not 2 prefix tokens and a 4x4 grid"):
        inspection.expose(model, grid=(4, 4), prefix_tokens=2)


# --- Grad-CAM ----------------------------------------------------------------------------


def eager_gradients(name, model, images, units):
    """(A (B, 4, 4, C), [∂f_u/∂A for each column u of `units`], [∂f_u/∂(the encoder's output
    patch tokens)]) through an eager re-implementation of the model, the head included:
    ViT: class token -> Dropout -> Dense; DeiT: class token -> Dense; Swin: the mean of the
    final tokens -> Dropout -> Dense. A is the tokens entering the last block (ViT, DeiT) or
    the final tokens (Swin); each sample's score depends on its own tokens only, so the
    gradient of the batch's sum is every sample's own."""
    head = model.get_layer("predictions")
    gradients, output_gradients = [], []
    for k in range(units.shape[1]):
        with tf.GradientTape(persistent=True) as tape:
            if name == "swin":
                tokens = model.backbone(images)
                tape.watch(tokens)
                encoded = tokens
                pooled = model.get_layer("output_dropout")(tf.reduce_mean(tokens, axis=1))
            else:
                tokens = last_block_input(name, model, images)
                tape.watch(tokens)
                encoder = encoder_of(name, model)
                encoded = run_block(encoder.encoder_layers[-1], tokens)
                tape.watch(encoded)
                pooled = encoder.layer_norm(encoded)[:, 0]
                if name == "vit":
                    pooled = model.get_layer("output_dropout")(pooled)
            logits = head(pooled)
            score = tf.reduce_sum(tf.gather(logits, units[:, k], axis=1, batch_dims=1))
        gradients.append(on_grid(name, tape.gradient(score, tokens)))
        output_gradients.append(on_grid(name, tape.gradient(score, encoded)))
        del tape
    return on_grid(name, tokens), gradients, output_gradients, logits.numpy()


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.slow
def test_gradcam_weighs_the_tokens_by_their_mean_gradient(classifiers, images, units, name):
    """Grad-CAM's definition on each model's default activation, the gradient taken through
    an eager re-implementation of the model. For ViT and DeiT, whose head reads the class
    token, the encoder's output patch tokens get no gradient at all: that is why the tokens
    entering the last block are weighed, whose gradient flows through its attention."""
    model = classifiers[name]
    activations, gradients, output_gradients, _ = eager_gradients(name, model, images, units)
    expected = np.stack([(g.mean(axis=(1, 2), keepdims=True) * activations).sum(axis=-1)
                         for g in gradients], axis=-1)
    logits, maps = explain(methods.gradcam, model, images, units, verbose=0, resizing=False)
    assert maps.shape == (len(images), *GRID, units.shape[1])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(logits, np.take_along_axis(model(images).numpy(), units, axis=1),
                               rtol=1e-5, atol=1e-6)
    for gradient, output_gradient in zip(gradients, output_gradients):
        assert np.abs(gradient).max() > 1e-3
        if name == "swin":  # the head averages the final tokens: each gets W_u / 16
            np.testing.assert_allclose(gradient, np.broadcast_to(gradient[:, :1, :1],
                                                                 gradient.shape), rtol=1e-5)
        else:
            np.testing.assert_array_equal(output_gradient, 0)
    # The exposed model's activations are spliced into its graph: its gradient with respect
    # to them is the tokens' own.
    exposed = inspection.expose(model)
    with tf.GradientTape() as tape:
        exposed_logits, exposed_activations = exposed(images)
        score = tf.reduce_sum(tf.gather(exposed_logits, units[:, 0], axis=1, batch_dims=1))
    spliced = tape.gradient(score, exposed_activations)
    assert spliced is not None
    np.testing.assert_allclose(spliced, gradients[0], rtol=1e-4,
                               atol=1e-5 * np.abs(gradients[0]).max())


def eager_logits(name, model, tokens):
    """ViT's and DeiT's logits from the tokens entering the last block, eagerly."""
    encoder = encoder_of(name, model)
    pooled = encoder.layer_norm(run_block(encoder.encoder_layers[-1], tokens))[:, 0]
    if name == "vit":
        pooled = model.get_layer("output_dropout")(pooled)
    return model.get_layer("predictions")(pooled).numpy()


@pytest.mark.parametrize("name", ["vit", "deit"])
@pytest.mark.slow
def test_the_cam_variants_follow_their_definitions_on_the_patch_grid(classifiers, images,
                                                                     units, name):
    """HiResCAM and XGrad-CAM from the eager gradients on the patch grid; the channel-scaled
    model Ablation-CAM runs against the eager model."""
    model = classifiers[name]
    activations, gradients, _, logits = eager_gradients(name, model, images, units)
    keep = {"verbose": 0, "resizing": False}
    # The channels' terms cancel in the sums: the tolerances scale with the terms.
    hires = explain(methods.hirescam, model, images, units, **keep)[1]
    terms = np.stack([g * activations for g in gradients], -1)  # (B, h, w, C, K)
    np.testing.assert_allclose(hires, terms.sum(-2), rtol=1e-4,
                               atol=1e-5 * np.abs(terms).sum(-2).max())
    shares = activations / activations.sum(axis=(1, 2), keepdims=True)
    terms = np.stack([(shares * g).sum(axis=(1, 2), keepdims=True) * activations
                      for g in gradients], -1)
    xgrad = explain(methods.xgradcam, model, images, units, **keep)[1]
    np.testing.assert_allclose(xgrad, terms.sum(-2), rtol=1e-4,
                               atol=1e-5 * np.abs(terms).sum(-2).max())
    # Ablation-CAM's forward passes: the patch tokens entering the last block scaled channel
    # by channel (the class token as it is), against the eager model. (Zeroing one channel
    # moves these random models' logits by ~1e-7 of themselves, float32's rounding: the
    # scaling is checked with random scales instead, Ablation-CAM's formula on CNNs.)
    tokens = last_block_input(name, model, images).numpy()
    scales = np.random.default_rng(0).uniform(0, 3, (len(images), tokens.shape[-1]))
    scaled = tokens.copy()
    scaled[:, PREFIX_TOKENS[name]:] *= scales[:, None, :]
    expected = eager_logits(name, model, scaled.astype("float32"))
    exposed = inspection.expose(model)
    got_logits, got_activations = inspection.channel_scaled(exposed)(
        [images, scales.astype("float32")])
    assert np.abs(expected - logits).max() > 1e-2 * np.abs(logits).max()
    np.testing.assert_allclose(got_logits, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(got_activations, activations * scales[:, None, None, :],
                               rtol=1e-4, atol=1e-5 * np.abs(activations).max())


@pytest.mark.slow
def test_cam_on_swin_is_gradcam_times_the_number_of_tokens(classifiers, images, units):
    """Swin's head averages its final tokens into a Dense layer, CAM's own head: on those
    tokens CAM is Grad-CAM times the 16 positions."""
    model = classifiers["swin"]
    keep = {"verbose": 0, "resizing": False}
    _, cam_maps = explain(methods.cam, model, images, units, **keep)
    _, gradcam_maps = explain(methods.gradcam, model, images, units, **keep)
    assert np.abs(cam_maps).max() > 1e-2
    np.testing.assert_allclose(cam_maps, 16 * gradcam_maps, rtol=1e-4,
                               atol=1e-5 * np.abs(cam_maps).max())


# --- every CAM method --------------------------------------------------------------------

CAM_METHODS = [name for name, method in methods.REGISTRY.items() if method.family == "cams"]


def test_the_cam_methods_are_those_of_the_registry():
    assert set(CAM_METHODS) == {"cam", "gradcam", "gradcampp", "layercam", "scorecam",
                                "xgradcam", "hirescam", "eigencam", "ablationcam"}


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.slow
def test_every_cam_method_explains_the_transformers(classifiers, images, units, name, method):
    """Through the shortcuts (their conventional normalisation, resized to the input): finite
    maps of the input's size, in [0, 1], not all zero. CAM, whose weights are those of a
    global-average-pooling + Dense head, is refused on ViT and DeiT, whose heads read the
    class token (Swin's averages its tokens: CAM applies)."""
    if method == "cam" and name in ("vit", "deit"):
        with pytest.raises(ValueError, match="head reads its class token: explain it with "
                           "gradcam"):
            shortcuts.SHORTCUTS[method](classifiers[name], images, units, verbose=0)
        return
    logits, maps = shortcuts.SHORTCUTS[method](classifiers[name], images, units, verbose=0)
    assert logits.shape == units.shape
    assert maps.shape == (len(images), *IMAGE_SHAPE[:2], units.shape[1])
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert maps.max() > 0.5
