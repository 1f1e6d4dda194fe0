"""Explaining a model under a mixed dtype policy (`utils.with_dtype_policy`): results in
float32, within the bounds stated here of the float32 model's, and the user's model and
Keras' global policy untouched.

The bounds, on this CNN (the pipeline's demo architecture, random weights): logits agree to
the precision of the compute dtype's mantissa (bfloat16: 8 bits, float16: 11), Grad-CAM's
normalised maps within 0.05 (bfloat16) and 0.01 (float16), and vanilla gradients, whose
ReLU gates flip with the rounding, correlate per image at 0.9 (bfloat16) and 0.99 (float16).
"""

import keras
import numpy as np
import pytest

import explain_lib
from explain_lib import inspection, utils
from pipeline import demo

BOUNDS = {
    # policy: (logits, relative to the largest; Grad-CAM, absolute; gradients, correlation)
    "mixed_bfloat16": (2.0 ** -7, 0.05, 0.9),
    "mixed_float16": (2.0 ** -10, 0.01, 0.99),
}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    return demo.make_model((32, 32, 3), 4, width=4)


@pytest.fixture(scope="module")
def data():
    images, labels = demo.make_shapes(8, seed=5, size=32)
    return images.astype("float32"), labels


@pytest.mark.parametrize("policy", list(BOUNDS))
def test_mixed_precision_stays_within_its_bound_of_float32(model, data, policy):
    x, labels = data
    logits_bound, cam_bound, correlation_bound = BOUNDS[policy]
    half = utils.with_dtype_policy(model, policy)
    assert half.layers[-1].dtype_policy.name == policy and half.layers[-1].kernel.dtype == "float32"
    assert model.layers[-1].dtype_policy.name == "float32"  # the user's model is untouched
    assert keras.config.dtype_policy().name == "float32"  # and so is the global policy

    logits, maps = explain_lib.gradcam(inspection.expose(model), x, labels, verbose=0)
    half_logits, half_maps = explain_lib.gradcam(inspection.expose(half), x, labels, verbose=0)
    assert half_logits.dtype == half_maps.dtype == np.float32
    assert np.abs(half_logits - logits).max() <= logits_bound * np.abs(logits).max()
    assert np.abs(half_maps - maps).max() <= cam_bound
    assert np.abs(half_maps - maps).max() > 0  # it did compute in half precision

    _, gradients = explain_lib.gradients(model, x, labels, verbose=0)
    _, half_gradients = explain_lib.gradients(half, x, labels, verbose=0)
    assert half_gradients.dtype == np.float32
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1]
                    for a, b in zip(gradients, half_gradients)]
    assert min(correlations) >= correlation_bound, correlations


def test_float32_is_the_model_itself_and_an_unknown_policy_is_refused(model):
    assert utils.with_dtype_policy(model, "float32") is model
    with pytest.raises(ValueError, match="Unknown precision 'float8'"):
        utils.with_dtype_policy(model, "float8")
