"""Every method gives the same maps on two replicas (two logical CPUs) as on one device."""

import numpy as np
import pytest

from explain_lib import inspection
from explain_lib.engine.explaining import explain
from explain_lib.methods import METHODS, cams, meta
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import CAM_METHODS, FAST_SETTINGS

COMPOSED = {"smooth_tta_gradcam": meta.smooth(meta.tta(cams.gradcam, scales=(1.5,)), 3, 0.2, 2)}


@pytest.fixture(scope="module")
def models(mirrored_strategy):
    """(model, exposed model) on one device and the same on two replicas."""
    single = tiny_cnn(input_shape=(None, None, 3), seed=3)
    with mirrored_strategy.scope():
        replicated = tiny_cnn(input_shape=(None, None, 3), seed=3)
        replicated_exposed = inspection.expose(replicated)
    assert replicated_exposed.distribute_strategy.num_replicas_in_sync == 2
    return (single, inspection.expose(single)), (replicated, replicated_exposed)


@pytest.mark.parametrize("name", [*METHODS, *COMPOSED])
def test_two_replicas_give_the_maps_of_one_device(models, images, name):
    method = METHODS.get(name) or COMPOSED[name]
    which = 1 if name in CAM_METHODS or name in COMPOSED else 0
    units = np.random.default_rng(2).integers(0, 5, (len(images), 2)).astype("int32")
    params = {"verbose": 0, "batch_size": 3, "resizing": False, **FAST_SETTINGS.get(name, {})}
    # 7 samples in batches of 3: 3, 3 and 1, none of which divides into two replicas.
    logits, maps = explain(method, models[0][which], images, units, **params)
    replicated_logits, replicated_maps = explain(method, models[1][which], images, units, **params)
    assert np.abs(maps).max() > 0
    np.testing.assert_allclose(replicated_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replicated_maps, maps, rtol=1e-4, atol=1e-6 * np.abs(maps).max())
