"""The registry declares each method once; every parameter it declares reaches the method,
through `explain` and through the shortcut; names that would reach nobody are refused."""

import ast
import inspect
import os

import numpy as np
import pytest

import explain_lib
from explain_lib import filters, inspection, methods, shortcuts
from explain_lib.engine.explaining import check_explain, explain
from explain_lib.methods import (
    attention,
    cams,
    common,
    gradient,
    meta,
    perturbation,
    rules,
    sampling,
    surrogate,
)
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import (
    FAST_SETTINGS,
    ROUTING,
    ROUTING_REFUSED,
    ROUTING_SAME,
    registered_methods,
    rounding_tolerance,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def test_the_registry_declares_every_method_of_the_method_modules():
    functions = {m.function for m in methods.REGISTRY.values()}
    for module in (gradient, cams, perturbation, attention, rules, sampling, surrogate):
        for function in module.METHODS:
            assert function in functions, function.__name__
    for name, method in methods.REGISTRY.items():
        assert methods.get(name) is method
        assert getattr(methods, name) is method.function  # methods holds the methods
        assert shortcuts.SHORTCUTS[name] is getattr(explain_lib, name)  # shortcuts: explain
        # Guided Grad-CAM weighs an inner activation too, but its maps come at the input's
        # size (the guided gradient's).
        assert method.exposed == (method.family == "cams" or name == "guided_gradcam")
        assert method.attention == (method.family == "attention")
        # The methods whose maps come at an inner resolution (a CAM's activation, a
        # transformer's patch grid) are resized to the input's by default.
        assert method.upsampled == (method.family == "cams" or method.attention)
        assert method.upsampled == method.explain_defaults["resizing"]
        assert method.random == bool(method.seeds), name  # a random method has a seed
        assert callable(method.postprocessing) and method.summary and method.reference
    assert methods.get("smoothgrad").base == "gradients"
    assert methods.get("rise").seeds == ("seed",)
    assert methods.get("smoothgrad").seeds == ("noise_seed",)


def test_parameters_are_read_from_the_signature_meta_methods_listing_their_base_methods():
    assert methods.get("integrated_gradients").parameters == {
        "baseline": 0.0, "n_steps": 32, "chunk_size": 8, "blur_sigma": None}
    assert methods.get("gradcam").parameters == {}
    assert list(methods.get("smoothgrad").parameters) == [
        "repetitions", "noise", "noise_chunk_size", "noise_seed", "gradient_filter"]


def test_methods_know_no_engine():
    folder = os.path.join(REPO, "explain_lib", "methods")
    for filename in sorted(os.listdir(folder)):
        if not filename.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, filename), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for name in imported:
                assert not name.startswith(("explain_lib.engine", "explain_lib.shortcuts")), (
                    filename, name)


@pytest.mark.parametrize("name", ["gradcam++", "", None])
def test_an_unknown_name_lists_the_valid_ones(name):
    valid = "Valid names: ablationcam, attention_rollout, cam, deconvnet, eigencam, full_gradients"
    with pytest.raises(ValueError, match=valid):
        methods.get(name)


def test_a_method_is_registered_once_and_a_random_one_needs_a_seed():
    with pytest.raises(ValueError, match="already registered as 'gradcam'"):
        methods.register("gradcam", cams.gradcam)

    def noisy(model, inputs, indices=None, spatial_axis=(-3, -2)):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="declared random but has no seed parameter"):
        methods.register("noisy", noisy, random=True)
    assert "noisy" not in methods.REGISTRY


def test_the_docs_list_every_method_with_the_parameters_the_registry_declares():
    page = open(os.path.join(REPO, "docs", "library.md"), encoding="utf-8").read()
    assert methods.registry.markdown_table() in page


# --- names that reach nobody ------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    model = tiny_cnn(seed=4)
    return model, inspection.expose(model)


def test_an_unknown_parameter_is_refused_before_any_work_listing_the_methods(models, images):
    calls = []

    def counting(model, inputs, indices=None, spatial_axis=(-3, -2), n_steps=3):
        calls.append(1)
        return gradient.gradients(model, inputs, indices)

    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) steps_ for counting: it "
                                         r"takes n_steps"):
        explain(counting, models[0], images, [0] * 7, verbose=0, steps_=3)
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) repetitions for gradients: "
                                         r"it takes gradient_filter"):
        explain_lib.gradients(models[0], images, [0] * 7, verbose=0, repetitions=3)
    with pytest.raises(ValueError, match="Unknown parameter.*explain_predicted_only"):
        explain_lib.gradcam.predicted(models[1], images, verbose=0, explain_predicted_only=1)
    assert not calls


def test_a_method_parameter_named_like_an_explain_argument_is_refused(models, images):
    def shadowed(model, inputs, indices=None, spatial_axis=(-3, -2), steps=32):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="shadowed has parameter.s. steps named like explain's"):
        explain(shadowed, models[0], images, [0] * 7, verbose=0)
    with pytest.raises(ValueError, match="cannot be given as method parameters"):
        explain(gradient.gradients, models[0], images, [0] * 7, verbose=0, inputs=images)


@pytest.mark.slow
def test_every_registered_method_passes_the_engine_check(models):
    for name in registered_methods():
        method = methods.get(name)
        check_explain(method.function, models[0], (12, 12, 3), top_k=1,
                      **FAST_SETTINGS.get(name, {}))


def test_steps_is_explains_and_n_steps_is_integrated_gradients(models, images):
    # explain's steps reads batches; the path length is n_steps and reaches the method.
    units = np.arange(7) % 5
    _, two_batches = explain(gradient.integrated_gradients, models[0], images, units,
                             batch_size=3, steps=2, verbose=0)
    assert two_batches.shape[0] == 6
    _, one = explain(gradient.integrated_gradients, models[0], images, units, verbose=0,
                     n_steps=1)
    _, many = explain(gradient.integrated_gradients, models[0], images, units, verbose=0,
                      n_steps=64)
    assert np.abs(one - many).max() > 1e-3 * np.abs(many).max()


# --- every declared parameter reaches its method ------------------------------------------------


def routing_cases():
    """(method, parameter) for every parameter the registry declares of the methods that
    explain any model (the table in tests/explain_lib/methods/models.py must cover them
    all: checked below; test_attention routes the attention methods')."""
    return [(name, parameter) for name in registered_methods()
            for parameter in methods.get(name).parameters]


def test_the_routing_table_covers_every_declared_parameter():
    declared = {name: set(methods.get(name).parameters) for name in registered_methods()}
    assert {name: set(values) for name, values in ROUTING.items()} == declared


ROUTING_BASE = {name: {**FAST_SETTINGS.get(name, {}), "repetitions": 2, "noise_chunk_size": 2}
                for name in ("smoothgrad", "vargrad", "squaregrad")}
"""The noisy methods' settings in the routing test: two copies in one chunk, which traces
the method once where `FAST_SETTINGS`' loop with an uneven last chunk traces it three times
(the replica, XLA and predicted tests run that loop). Every `ROUTING` value still differs
from these (3 repetitions), and `noise_chunk_size=1` still compares two chunks with one."""


def routing_settings(name):
    return ROUTING_BASE.get(name, FAST_SETTINGS.get(name, {}))


def explain_both_ways(name, models, images, units, params):
    """(maps through explain, maps through the shortcut) for `params` on top of the
    routing settings."""
    method = methods.get(name)
    model = models[1] if method.exposed else models[0]
    params = {"verbose": 0, **routing_settings(name), **params}
    direct = explain(method.function, model, images, units, **params)[1]
    through_shortcut = shortcuts.SHORTCUTS[name](model, images, units, **params)[1]
    return direct, through_shortcut


@pytest.mark.parametrize("name, parameter", routing_cases())
@pytest.mark.slow
def test_each_parameter_reaches_its_method_through_explain_and_the_shortcut(models, images, name,
                                                                             parameter):
    units = np.arange(len(images)) % 5
    changed = ROUTING[name][parameter]
    if (name, parameter) in ROUTING_REFUSED or parameter in ROUTING_SAME:
        # A refusal that names the value shows it arrived; chunk sizes leave the maps as
        # they are, by design.
        message = ROUTING_REFUSED.get((name, parameter), f"{parameter}={changed}")
        method = methods.get(name)
        model = models[1] if method.exposed else models[0]
        params = {"verbose": 0, **routing_settings(name), parameter: changed}
        with pytest.raises(ValueError, match=message):
            explain(method.function, model, images, units, **params)
        with pytest.raises(ValueError, match=message):
            shortcuts.SHORTCUTS[name](model, images, units, **params)
        if parameter in ROUTING_SAME:
            # Compared raw: normalising tiny maps would scale their rounding up.
            expected = explain_both_ways(name, models, images, units, {})[0]
            same = explain_both_ways(name, models, images, units,
                                     {parameter: ROUTING_SAME[parameter]})[0]
            np.testing.assert_allclose(same, expected, rtol=1e-4,
                                       atol=rounding_tolerance(name, expected, 1e-5))
        return
    base = explain_both_ways(name, models, images, units, {})
    other = explain_both_ways(name, models, images, units, {parameter: changed})
    for got, expected in zip(other, base):
        assert np.abs(got - expected).max() > 1e-3 * np.abs(expected).max(), (
            f"{name}: {parameter}={changed!r} did not change the maps")


# --- the shortcuts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(registered_methods()))
@pytest.mark.slow
def test_shortcuts_give_normalised_maps_of_the_input_size(models, images, name):
    model = models[1] if methods.get(name).exposed else models[0]
    units = np.random.default_rng(5).integers(0, 5, len(images))
    logits, maps = shortcuts.SHORTCUTS[name](model, images, units, verbose=0,
                                             **FAST_SETTINGS.get(name, {}))
    assert logits.shape == (7, 1) and maps.shape == (7, 12, 12, 1)
    # Normalised: each map spans [0, 1], or is all 0 when nothing is positive. CAMs are
    # normalised at the activation's resolution (10x10), then resized: their peak may blur.
    peaks = maps.max(axis=(1, 2))
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    if methods.get(name).upsampled:
        assert np.all((peaks > 0.5) | (peaks == 0)) and peaks.max() > 0.5
    else:
        assert np.all(np.isclose(peaks, 1, atol=1e-5) | (peaks == 0)) and peaks.max() > 0.5
    if name not in ("smoothgrad", "vargrad", "squaregrad"):  # those average noisy logits
        expected = models[0].predict(images, verbose=0)[np.arange(len(images)), units]
        np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gradients", "gradcam", "rise"])
@pytest.mark.slow
def test_shortcuts_explain_the_predicted_units_with_their_post_processing(models, images, name):
    model = models[1] if methods.get(name).exposed else models[0]
    shortcut = shortcuts.SHORTCUTS[name]
    params = {"verbose": 0, **FAST_SETTINGS.get(name, {})}
    units, logits, maps = shortcut.predicted(model, images, top_k=2, **params)
    top2 = np.argsort(-models[0].predict(images, verbose=0), axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(units, top2)
    given_logits, given_maps = shortcut(model, images, top2, **params)
    np.testing.assert_allclose(logits, given_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, given_maps, rtol=1e-5, atol=1e-6)
    assert 0.5 < maps.max() <= 1 + 1e-6 and maps.min() >= 0  # normalised (CAMs: then resized)


def test_a_shortcut_applies_the_registrys_post_processing(models, images):
    units = np.arange(7) % 5
    for name in ("gradients", "gradcam", "rise"):
        method = methods.get(name)
        model = models[1] if method.exposed else models[0]
        params = {"verbose": 0, **FAST_SETTINGS.get(name, {})}
        _, maps = shortcuts.SHORTCUTS[name](model, images, units, **params)
        _, expected = explain(method.function, model, images, units, **params,
                              **method.explain_defaults)
        np.testing.assert_allclose(maps, expected, rtol=1e-6)
    assert methods.get("rise").postprocessing is filters.normalize
    assert methods.get("gradcam").postprocessing is filters.positive_normalize


def test_meta_methods_built_by_hand_take_their_parameters_too():
    method = meta.smooth(meta.tta(cams.gradcam, scales=(1.5,)), repetitions=2)
    parameters, open_ended = common.parameters_of(method)
    assert not open_ended and parameters["repetitions"] == 2 and parameters["scales"] == (1.5,)
    assert inspect.signature(method).parameters["spatial_axis"].kind is (
        inspect.Parameter.KEYWORD_ONLY)
