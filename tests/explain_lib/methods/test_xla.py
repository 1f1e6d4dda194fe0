"""Every method compiles under XLA (a model compiled with `jit_compile=True`): static chunk
sizes, loops and gathers XLA accepts. Deterministic methods give the maps they give without
XLA; XLA draws other random numbers, so the noisy and masked methods are only checked for
a sane result."""

import numpy as np
import pytest

from explain_lib import inspection
from explain_lib.engine import explaining
from explain_lib.engine.explaining import explain
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import (
    FAST_SETTINGS,
    SMOOTH_TTA_GRADCAM,
    registered_methods,
    rounding_tolerance,
)

RANDOM = {"smoothgrad", "rise", "smooth_tta_gradcam", "gradient_shap", "lime", "kernel_shap"}
CASES = {
    **registered_methods(),
    "smooth_tta_gradcam": SMOOTH_TTA_GRADCAM,
}


@pytest.fixture(scope="module")
def models():
    """(model, exposed model) without XLA, and the same weights with XLA."""
    plain = tiny_cnn(input_shape=(None, None, 3), seed=5)
    xla = tiny_cnn(input_shape=(None, None, 3), seed=5)
    xla_exposed = inspection.expose(xla)
    xla_exposed.compile(jit_compile=True)
    xla.compile(jit_compile=True)
    assert explaining._uses_xla(xla_exposed)
    return (plain, inspection.expose(plain)), (xla, xla_exposed)


# vargrad and squaregrad share smoothgrad's code path (they differ in a final formula).
@pytest.mark.parametrize("name", [n for n in CASES if n not in ("vargrad", "squaregrad")])
@pytest.mark.slow
def test_methods_run_under_xla(models, images, name):
    method, which = CASES[name]
    units = np.random.default_rng(2).integers(0, 5, (len(images), 2)).astype("int32")
    params = {"verbose": 0, "batch_size": 4, "resizing": False, **FAST_SETTINGS.get(name, {})}
    logits, maps = explain(method, models[0][which], images, units, **params)
    xla_logits, xla_maps = explain(method, models[1][which], images, units, **params)
    assert xla_maps.shape == maps.shape and np.isfinite(xla_maps).all()
    if name in RANDOM:
        # Same distribution, other draws: the same order of magnitude.
        assert 0.2 < np.abs(xla_maps).mean() / np.abs(maps).mean() < 5
    else:
        np.testing.assert_allclose(xla_logits, logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(xla_maps, maps, rtol=1e-3,
                                   atol=rounding_tolerance(name, maps, 1e-5))


@pytest.mark.parametrize("name", ["gradcam", "integrated_gradients", "occlusion"])
def test_predicted_units_under_xla(models, images, name):
    """Choosing the units inside an XLA-compiled step gives the units and maps of one
    without XLA."""
    method, which = CASES[name]
    params = {"verbose": 0, "batch_size": 4, "resizing": False, **FAST_SETTINGS.get(name, {})}
    units, logits, maps = explaining.explain_predicted(method, models[0][which], images,
                                                       top_k=2, **params)
    xla_units, xla_logits, xla_maps = explaining.explain_predicted(
        method, models[1][which], images, top_k=2, **params)
    np.testing.assert_array_equal(xla_units, units)
    np.testing.assert_allclose(xla_logits, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xla_maps, maps, rtol=1e-3,
                               atol=rounding_tolerance(name, maps, 1e-5))
