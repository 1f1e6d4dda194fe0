"""The registry of methods by name and the shortcuts with conventional post-processing."""

import numpy as np
import pytest

from explain_lib import inspection, methods
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import CAM_METHODS, FAST_SETTINGS


def test_every_registered_method_has_defaults_and_a_shortcut():
    assert set(methods.METHODS) == set(methods.DEFAULTS) == set(methods.SHORTCUTS)
    for name, method in methods.METHODS.items():
        assert methods.get_method(name) is method
        assert getattr(methods, name) is methods.SHORTCUTS[name]


@pytest.mark.parametrize("name", ["gradcam++", "", None])
def test_an_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match="Valid names: cam, full_gradients, gradcam, gradcampp"):
        methods.get_method(name)


@pytest.fixture(scope="module")
def models():
    model = tiny_cnn(seed=4)
    return model, inspection.expose(model)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_shortcuts_give_normalised_maps_of_the_input_size(models, images, name):
    model = models[1] if name in CAM_METHODS else models[0]
    units = np.random.default_rng(5).integers(0, 5, len(images))
    logits, maps = methods.SHORTCUTS[name](model, images, units, verbose=0,
                                           **FAST_SETTINGS.get(name, {}))
    assert logits.shape == (7, 1) and maps.shape == (7, 12, 12, 1)
    # Normalised: each map spans [0, 1], or is all 0 when nothing is positive. CAMs are
    # normalised at the activation's resolution (10x10), then resized: their peak may blur.
    peaks = maps.max(axis=(1, 2))
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    if name in CAM_METHODS:
        assert np.all((peaks > 0.5) | (peaks == 0)) and peaks.max() > 0.5
    else:
        assert np.all(np.isclose(peaks, 1, atol=1e-5) | (peaks == 0)) and peaks.max() > 0.5
    if name not in ("smoothgrad", "vargrad", "squaregrad"):  # those average noisy logits
        expected = models[0].predict(images, verbose=0)[np.arange(len(images)), units]
        np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gradients", "gradcam", "rise"])
def test_shortcuts_explain_the_predicted_units_with_their_post_processing(models, images, name):
    model = models[1] if name in CAM_METHODS else models[0]
    shortcut = methods.SHORTCUTS[name]
    params = {"verbose": 0, **FAST_SETTINGS.get(name, {})}
    units, logits, maps = shortcut.predicted(model, images, top_k=2, **params)
    top2 = np.argsort(-models[0].predict(images, verbose=0), axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(units, top2)
    given_logits, given_maps = shortcut(model, images, top2, **params)
    np.testing.assert_allclose(logits, given_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, given_maps, rtol=1e-5, atol=1e-6)
    assert 0.5 < maps.max() <= 1 + 1e-6 and maps.min() >= 0  # normalised (CAMs: then resized)
