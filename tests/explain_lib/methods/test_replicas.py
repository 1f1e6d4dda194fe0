"""Every method gives the same maps on two replicas (two logical CPUs) as on one device."""

import numpy as np
import pytest

from explain_lib.engine.explaining import explain
from tests.explain_lib.methods.models import (
    FAST_SETTINGS,
    SMOOTH_TTA_GRADCAM,
    on_one_device_and_two_replicas,
    registered_methods,
    rounding_tolerance,
)

CASES = {
    **registered_methods(),
    "smooth_tta_gradcam": SMOOTH_TTA_GRADCAM,
}


@pytest.fixture(scope="module")
def models(mirrored_strategy):
    return on_one_device_and_two_replicas(mirrored_strategy, seed=3)


# squaregrad is vargrad + smoothgrad² over the same copies and chunks: its mean and variance
# are smoothgrad's and vargrad's cases here.
@pytest.mark.parametrize("name", [n for n in CASES if n != "squaregrad"])
def test_two_replicas_give_the_maps_of_one_device(models, images, name):
    method, which = CASES[name]
    units = np.random.default_rng(2).integers(0, 5, (len(images), 2)).astype("int32")
    params = {"verbose": 0, "batch_size": 3, "resizing": False, **FAST_SETTINGS.get(name, {})}
    # 7 samples in batches of 3: 3, 3 and 1, none of which divides into two replicas.
    logits, maps = explain(method, models[0][which], images, units, **params)
    replicated_logits, replicated_maps = explain(method, models[1][which], images, units, **params)
    assert np.abs(maps).max() > 0
    np.testing.assert_allclose(replicated_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replicated_maps, maps, rtol=1e-4,
                               atol=rounding_tolerance(name, maps, 1e-5))
