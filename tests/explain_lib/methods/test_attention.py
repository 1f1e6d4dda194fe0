"""Attention rollout against an independent reference, on tiny KerasHub ViT and DeiT
classifiers (random weights, 32x32 images in 8x8 patches: a 4x4 grid of patch tokens).

The reference follows Abnar & Zuidema's code (`samiraabnar/attention_flow`,
`compute_joint_attention(att_mat, add_residual=True)`) one layer at a time in float64 numpy:
each block's input tokens are computed eagerly from the encoder's public sublayers, each
block's attention probabilities from its own sublayers (ViT: its `mha` on its `layer_norm_1`;
DeiT: the block's own `return_attention_scores=True`), the heads fused, the identity added,
the rows renormalised, and the layers multiplied last to first; the map is the class token's
row over the patch tokens on their grid.
"""

import keras
import keras_hub
import numpy as np
import pytest

import explain_lib
from explain_lib import filters, methods, utils
from explain_lib.engine.explaining import explain, explain_predicted
from tests.conftest import tiny_cnn

IMAGE_SHAPE = (32, 32, 3)
GRID = (4, 4)  # 32x32 images in 8x8 patches
UNITS = 5


def vit_classifier(seed=0):
    """A 2-block ViT (class token + 4x4 patch tokens, 16 channels, 2 heads)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(image_shape=IMAGE_SHAPE, patch_size=8, num_layers=2,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=UNITS)


def deit_classifier(seed=0):
    """A 2-block DeiT (class and distillation tokens + 4x4 patch tokens)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DeiTBackbone(image_shape=IMAGE_SHAPE, patch_size=8, num_layers=2,
                                             num_heads=2, hidden_dim=16, intermediate_dim=32)
    return keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=UNITS)


BUILDERS = {"vit": vit_classifier, "deit": deit_classifier}
PREFIX_TOKENS = {"vit": 1, "deit": 2}
FUSIONS = {"mean": np.mean, "max": np.max, "min": np.min}


@pytest.fixture(scope="module")
def classifiers():
    return {name: build(seed=4) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def images():
    """Four images, scaled apart so that the model does not predict one unit for all."""
    scales = np.array([0.5, 1.0, 2.0, 4.0], "float32")[:, None, None, None]
    return np.random.default_rng(0).normal(0, 1, (4, *IMAGE_SHAPE)).astype("float32") * scales


@pytest.fixture(scope="module")
def units(images):
    """Three different units per image."""
    rng = np.random.default_rng(1)
    return np.stack([rng.permutation(UNITS)[:3] for _ in images]).astype("int32")


def block_attentions(name, model, images):
    """Every block's attention probabilities (B, heads, T, T), computed eagerly block by block
    from the encoder's public sublayers (not through the library)."""
    backbone = model.backbone
    attentions = []
    if name == "vit":
        encoder = backbone.get_layer("vit_encoder")
        tokens = encoder.dropout(backbone.get_layer("vit_patching_and_embedding")(images))
        for block in encoder.encoder_layers:
            normed = block.layer_norm_1(tokens)
            attentions.append(block.mha(normed, normed, return_attention_scores=True)[1])
            tokens = block(tokens)
    else:
        encoder = backbone.get_layer("deit_encoder")
        tokens = backbone.get_layer("deit_patching_and_embedding")(images)
        for block in encoder.encoder_layers:
            tokens, scores = block(tokens, return_attention_scores=True)
            attentions.append(scores)
    return [np.asarray(a, np.float64) for a in attentions]


def reference_rollout(name, model, images, head_fusion="mean"):
    """Attention rollout (B, 4, 4), one layer at a time in float64."""
    rollout = None
    for attention in block_attentions(name, model, images):
        fused = FUSIONS[head_fusion](attention, axis=1)  # (B, T, T)
        assert fused.shape[-1] == PREFIX_TOKENS[name] + GRID[0] * GRID[1]
        mixed = fused + np.eye(fused.shape[-1])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout[:, 0, PREFIX_TOKENS[name]:].reshape(-1, *GRID)


def rollout_tolerance(maps):
    """The attention reached through the library's unrolled blocks differs from the model's
    fused kernel by float32 rounding (~1e-6 relative): a tolerance of the map's magnitude."""
    return 1e-5 * np.abs(maps).max()


@pytest.mark.parametrize("name, head_fusion",
                         [("vit", "mean"), ("deit", "mean"), ("vit", "max"), ("deit", "min")])
@pytest.mark.slow
def test_rollout_is_the_reference_rollout(classifiers, images, units, name, head_fusion):
    """The maps are the reference rollout, whichever head fusion; every explained unit gets
    the same map (attention does not depend on the unit) and its own logit."""
    model = classifiers[name]
    logits, maps = explain(methods.attention_rollout, model, images, units, verbose=0,
                           resizing=False, head_fusion=head_fusion)
    assert maps.shape == (len(images), *GRID, units.shape[1])
    expected = reference_rollout(name, model, images, head_fusion)
    # The rollout of a row-stochastic product is a distribution over all tokens: the patch
    # tokens' share is positive and below 1, and not uniform.
    assert np.all(expected > 0) and np.all(expected.sum(axis=(1, 2)) < 1)
    assert np.ptp(expected, axis=(1, 2)).min() > 1e-4
    for k in range(units.shape[1]):
        np.testing.assert_array_equal(maps[..., k], maps[..., 0])
        np.testing.assert_allclose(maps[..., k], expected, rtol=1e-4,
                                   atol=rollout_tolerance(expected))
    np.testing.assert_allclose(logits, np.take_along_axis(model.predict(images, verbose=0),
                                                          units, axis=1), rtol=1e-5, atol=1e-5)


def test_head_fusion_reaches_the_method_through_the_shortcut_and_an_unknown_one_is_refused(
        classifiers, images, units):
    """`head_fusion` goes through `explain_lib.attention_rollout` (the shortcut: normalised
    maps resized to the input) to the method: "max" gives other maps than the default
    "mean", and those of `explain` with "max" normalised and resized. An unknown fusion is
    refused by name."""
    model = classifiers["vit"]
    _, mean_maps = explain_lib.attention_rollout(model, images, units, verbose=0)
    _, max_maps = explain_lib.attention_rollout(model, images, units, verbose=0,
                                                head_fusion="max")
    assert max_maps.shape == mean_maps.shape == (len(images), *IMAGE_SHAPE[:2], units.shape[1])
    # Normalised, then resized: within [0, 1]; the two fusions differ by a visible amount.
    assert max_maps.min() >= 0 and max_maps.max() <= 1 + 1e-6
    assert np.abs(max_maps - mean_maps).max() > 1e-2
    _, raw_max = explain(methods.attention_rollout, model, images, units, verbose=0,
                         resizing=False, head_fusion="max")
    expected = utils.resize(filters.normalize(raw_max), IMAGE_SHAPE[:2]).numpy()
    np.testing.assert_allclose(max_maps, expected, atol=1e-5)
    with pytest.raises(ValueError, match="head_fusion must be one of mean, max, min, not "
                                         "'median'"):
        explain_lib.attention_rollout(model, images, units, verbose=0, head_fusion="median")


@pytest.mark.slow
def test_two_replicas_give_the_maps_of_one_device(classifiers, images, units, mirrored_strategy):
    """The same weights on the two replicas of a MirroredStrategy (two logical CPUs) give the
    maps and logits of one device; 4 images in batches of 3 shard unevenly (2 + 1, 1 + 0)."""
    single = classifiers["vit"]
    with mirrored_strategy.scope():
        replicated = vit_classifier(seed=9)
    replicated.set_weights(single.get_weights())
    assert replicated.distribute_strategy.num_replicas_in_sync == 2
    params = {"verbose": 0, "resizing": False, "batch_size": 3}
    logits, maps = explain(methods.attention_rollout, single, images, units, **params)
    replicated_logits, replicated_maps = explain(methods.attention_rollout, replicated, images,
                                                 units, **params)
    assert np.abs(maps).max() > 0
    np.testing.assert_allclose(replicated_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replicated_maps, maps, rtol=1e-4, atol=rollout_tolerance(maps))


@pytest.mark.parametrize("name", ["vit", "deit"])
@pytest.mark.slow
def test_predicted_units_are_the_model_s_top_units_explained_as_given(classifiers, images,
                                                                      name):
    """`explain_predicted` chooses each image's two best units from the method's own forward
    pass, and explains them as `explain` explains them given."""
    model = classifiers[name]
    scores = model.predict(images, verbose=0)
    expected_units = np.argsort(-scores, axis=1, kind="stable")[:, :2].astype("int32")
    assert len(set(expected_units[:, 0])) > 1  # not every image predicts the same unit
    params = {"verbose": 0, "resizing": False, "batch_size": 3}
    chosen, logits, maps = explain_predicted(methods.attention_rollout, model, images, top_k=2,
                                             **params)
    np.testing.assert_array_equal(chosen, expected_units)
    np.testing.assert_allclose(logits, np.take_along_axis(scores, expected_units, axis=1),
                               rtol=1e-5, atol=1e-5)
    given_logits, given_maps = explain(methods.attention_rollout, model, images, expected_units,
                                       **params)
    np.testing.assert_allclose(logits, given_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, given_maps, rtol=1e-5, atol=rollout_tolerance(maps))
    assert np.abs(maps).max() > 0


def test_a_cnn_is_refused_saying_a_transformer_is_needed():
    """A CNN has no attention to roll out: refused, saying what the method needs."""
    model = tiny_cnn(input_shape=(12, 12, 3))
    images = np.random.default_rng(0).uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    with pytest.raises(ValueError, match="attention_rollout reads a transformer's attention"):
        explain(methods.attention_rollout, model, images, [0, 1], verbose=0)
    with pytest.raises(ValueError, match="attention_rollout reads a transformer's attention"):
        explain_lib.attention_rollout(model, images, [0, 1], verbose=0)
