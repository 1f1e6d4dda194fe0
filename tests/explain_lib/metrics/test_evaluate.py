"""`evaluate` runs metrics the way `explain` runs methods: batched, one compiled step, under
the model's strategy, nothing stored on the model; every parameter the registry declares
reaches its metric, and what would reach nobody is refused before any work."""

import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import metrics
from explain_lib.engine import evaluating
from explain_lib.metrics import registry
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import on_one_device_and_two_replicas

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

FAST_SETTINGS = {
    "deletion": {"n_steps": 4, "baseline": "blur", "blur_sigma": 1.0},
    "insertion": {"n_steps": 4, "blur_sigma": 1.0},
    "mufidelity": {"grid_size": 3, "n_samples": 6, "baseline": "blur", "blur_sigma": 1.0},
    "model_randomization": {"layers": ["conv2"]},
}
"""Metric parameters small enough for quick tests on 12x12 inputs; the "blur" baselines let
`blur_sigma` matter."""

ROUTING = {
    "deletion": {"n_steps": 3, "baseline": 0.5, "blur_sigma": 3.0, "score": "logit",
                 "chunk_size": 0},
    "insertion": {"n_steps": 3, "baseline": 0.5, "blur_sigma": 3.0, "score": "logit",
                  "chunk_size": 0},
    "mufidelity": {"grid_size": 4, "subset_percent": 0.5, "n_samples": 8, "baseline": 0.5,
                   "blur_sigma": 3.0, "score": "probability", "correlation": "spearman",
                   "seed": 1, "chunk_size": 0},
    "pointing_game": {"tolerance": 5},  # the default at 12x12 is 15 * 12 / 224 = 0.8
    "energy_pointing_game": {},
    "model_randomization": {"method": "gradcam", "layers": ["logits"], "seed": 1,
                            "method_params": {"gradient_filter": "square"}},
}
"""For every registered metric, a changed value of each of its parameters. Chunk sizes bound
memory and leave the scores as they are by design: their changed value, 0, is refused by
name (so the test still sees it arrive), and `ROUTING_SAME` is a valid change that must leave
the scores equal."""

ROUTING_SAME = {"chunk_size": 1}


@pytest.fixture(scope="module")
def model():
    return tiny_cnn(seed=9)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 1, (5, 12, 12, 3)).astype("float32")
    units = np.array([[0, 1], [2, 3], [4, 0], [1, 1], [3, 2]], "int32")
    maps = rng.uniform(0, 1, (5, 12, 12, 2)).astype("float32")
    # Peaks 2 to 4 pixels from the boxes, so that the pointing game's tolerance decides.
    maps[:, 10, 10] = 2.0
    boxes = [[[0.0, 0.0, 8 / 12, 8 / 12]]] * 4 + [[[0.0, 0.0, 7 / 12, 7 / 12], [0.9, 0, 1, 0.1]]]
    return x, units, maps, boxes


def run(name, model, data, **params):
    x, units, maps, boxes = data
    entry = metrics.get(name)
    params = {"verbose": 0, **FAST_SETTINGS.get(name, {}), **params}
    if entry.takes_method:
        table = explain_lib.evaluate(name, model, x, units, **params)
        return table[["spearman", "ssim"]].to_numpy(), table
    truth = {"boxes": boxes} if entry.ground_truth else {}
    return explain_lib.evaluate(name, model if entry.needs_model else None, x, units, maps,
                                **truth, **params), None


# --- the registry ------------------------------------------------------------------------------


def test_the_registry_declares_every_metric_once_with_what_it_needs():
    assert list(metrics.REGISTRY) == ["deletion", "insertion", "mufidelity", "pointing_game",
                                      "energy_pointing_game", "model_randomization"]
    for name, metric in metrics.REGISTRY.items():
        assert metrics.get(name) is metric and metrics.get(metric.function) is metric
        assert getattr(metrics, name) is metric.function
        assert metric.summary and "arXiv:" in metric.reference
    assert metrics.get("deletion").higher_is_better is False
    assert metrics.get("pointing_game").needs == "maps, boxes or masks"
    assert metrics.get("model_randomization").needs == "model, method"
    with pytest.raises(ValueError, match="Valid names: deletion, energy_pointing_game"):
        metrics.get("AUC")


def test_the_loop_keeps_exactly_evaluates_own_arguments():
    signature = inspect.signature(explain_lib.evaluate).parameters
    assert registry.LOOP_ARGUMENTS == set(signature) - {"metric_params"}


def test_a_metric_parameter_named_like_an_evaluate_argument_is_refused():
    def shadowed(model, inputs, units, maps, steps=10):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="shadowed has parameter.s. steps named like evaluate"):
        metrics.register("shadowed", shadowed)
    assert "shadowed" not in metrics.REGISTRY
    with pytest.raises(ValueError, match="already registered as 'deletion'"):
        metrics.register("deletion", metrics.deletion)


def test_the_docs_list_every_metric_with_the_parameters_the_registry_declares():
    page = open(os.path.join(REPO, "docs", "metrics.md"), encoding="utf-8").read()
    assert registry.markdown_table() in page


# --- every declared parameter reaches its metric -----------------------------------------------


def test_the_routing_table_covers_every_declared_parameter():
    declared = {name: set(metric.parameters) for name, metric in metrics.REGISTRY.items()}
    assert {name: set(values) for name, values in ROUTING.items()} == declared


@pytest.fixture(scope="module")
def baseline_scores(model, data):
    return {name: run(name, model, data) for name in metrics.REGISTRY}


@pytest.mark.parametrize("name, parameter", [
    (name, parameter) for name, metric in metrics.REGISTRY.items()
    for parameter in metric.parameters])
@pytest.mark.slow
def test_each_parameter_reaches_its_metric(model, data, baseline_scores, name, parameter):
    changed = ROUTING[name][parameter]
    expected, expected_table = baseline_scores[name]
    if parameter in ROUTING_SAME:
        with pytest.raises(ValueError, match=f"{parameter}={changed}"):
            run(name, model, data, **{parameter: changed})
        same = run(name, model, data, **{parameter: ROUTING_SAME[parameter]})[0]
        np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-6)
        return
    got, table = run(name, model, data, **{parameter: changed})
    if table is not None and len(table) != len(expected_table):
        assert list(table.layer.unique()) != list(expected_table.layer.unique())
        return
    # Scores are probabilities, correlations or shares, of at most 1: a change 10 times the
    # float32 rounding of such values shows the parameter arrived.
    assert np.abs(got - expected).max() > 1e-5, (name, parameter)


# --- the loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, metric in metrics.REGISTRY.items()
                                  if not metric.takes_method])
@pytest.mark.slow
def test_two_replicas_give_the_scores_of_one_device(mirrored_strategy, data, name):
    (single, _), (replicated, _) = on_one_device_and_two_replicas(mirrored_strategy, seed=3)
    x, units, maps, boxes = data
    # 5 samples in batches of 2: 2, 2 and 1, the last of which does not divide in two.
    expected = run(name, single, data, batch_size=2)[0]
    got = run(name, replicated, data, batch_size=2)[0]
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _steps():
    """Every evaluate step the engine keeps: each traced once, a concrete function that never
    traces again, so a new step is a new trace."""
    return [step for steps in evaluating._compiled_steps.values() for step, _ in steps.values()]


def _trace_count():
    return len(_steps())


def test_one_compiled_step_serves_every_batch_and_later_calls(data):
    model = tiny_cnn(seed=10)
    x, units, maps, _ = data
    model(x[:1])  # Keras marks a model on its first call
    before = dict(vars(model))
    start = _trace_count()
    first = explain_lib.evaluate("deletion", model, x, units, maps, n_steps=3, batch_size=2,
                                 verbose=0)
    assert _trace_count() - start == 1  # batches of 2, 2 and 1: one trace
    again = explain_lib.evaluate("deletion", model, x, units, maps, n_steps=3, batch_size=3,
                                 verbose=0)
    assert _trace_count() - start == 1
    np.testing.assert_allclose(again, first, rtol=1e-6)
    explain_lib.evaluate("deletion", model, x, units, maps, n_steps=3, force=True, verbose=0)
    assert set(vars(model)) == set(before)  # nothing written onto the model
    assert all(vars(model)[k] is before[k] for k in before if k != "_jit_compile")


@pytest.mark.slow
def test_jit_compile_models_are_evaluated_under_xla_with_the_same_scores(data):
    x, units, maps, _ = data
    plain, xla = tiny_cnn(seed=5), tiny_cnn(seed=5)
    xla.compile(jit_compile=True)
    expected = explain_lib.evaluate("deletion", plain, x, units, maps, n_steps=5, verbose=0)
    got = explain_lib.evaluate("deletion", xla, x, units, maps, n_steps=5, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # MuFidelity's subsets are other draws under XLA (as RISE's masks): valid, not equal.
    correlations = explain_lib.evaluate("mufidelity", xla, x, units, maps, n_samples=8,
                                        verbose=0)
    assert np.all(np.abs(correlations) <= 1 + 1e-6)


def test_a_dataset_of_dicts_gives_the_scores_of_arrays(model, data):
    x, units, maps, boxes = data
    padded = metrics.pad_boxes(boxes)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"x": x, "y": units, "maps": maps, "boxes": padded}).batch(2)
    for name in ("deletion", "pointing_game"):
        entry = metrics.get(name)
        expected = run(name, model, data)[0]
        got = explain_lib.evaluate(name, model if entry.needs_model else None, dataset,
                                   verbose=0, **FAST_SETTINGS.get(name, {}))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_metric_function_of_ones_own_runs_like_a_registered_one(model, data):
    x, units, maps, _ = data

    def peak_value(model, inputs, units, maps, power=1.0):
        return tf.reduce_max(maps, axis=[1, 2]) ** power

    got = explain_lib.evaluate(peak_value, model, x, units, maps, power=2.0, verbose=0)
    np.testing.assert_allclose(got, maps.max(axis=(1, 2)) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) exponent for peak_value: it "
                                         r"takes power"):
        explain_lib.evaluate(peak_value, model, x, units, maps, exponent=2.0)


def test_what_would_reach_nobody_is_refused_before_any_work(model, data):
    x, units, maps, boxes = data
    calls = []

    def counting(model, inputs, units, maps, n_steps=3):
        calls.append(1)
        return tf.reduce_max(maps, axis=[1, 2])

    cases = [
        (dict(metric="deletion", steps_count=3), r"Unknown parameter\(s\) steps_count for "
         r"deletion: it takes n_steps, baseline, blur_sigma, score, chunk_size"),
        (dict(metric=counting, n_step=3), r"Unknown parameter\(s\) n_step for counting"),
        (dict(metric=counting, units=units), "cannot be given as parameters of counting"),
        (dict(metric="deletion", model=None), "deletion evaluates the model's scores"),
        (dict(metric="deletion", maps=None), "pass maps"),
        (dict(metric="pointing_game"), "pointing_game needs ground truth"),
        (dict(metric="deletion", boxes=boxes), "deletion does not use ground truth"),
        (dict(metric="pointing_game", boxes=boxes, masks=np.zeros((5, 12, 12))),
         "as boxes or as masks, not both"),
        (dict(metric=counting, maps=maps[:4]), "x and maps have different lengths"),
        (dict(metric=counting, maps=maps[..., :1]), "2 unit.s. per sample but 1 map"),
        (dict(metric=counting, maps=np.full_like(maps, np.nan)), "non-finite values"),
        (dict(metric=counting, y=units + 3), r"Unit indices \[5, 6, 7\] are out of range"),
        (dict(metric="pointing_game", model=None, masks=np.zeros((5, 6, 6))),
         "at the inputs' size"),
    ]
    for overrides, message in cases:
        arguments = {"model": model, "x": x, "y": units, "maps": maps, "verbose": 0,
                     **overrides}
        with pytest.raises(ValueError, match=message):
            explain_lib.evaluate(**arguments)
    assert not calls
