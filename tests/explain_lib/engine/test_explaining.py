"""The engine: reference numbers, every input type, replicas, tracing, callbacks, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import filters, inspection
from explain_lib.engine import explaining
from explain_lib.engine.explaining import explain, explain_step, partial_explain
from explain_lib.methods.gradient import gradients, integrated_gradients
from tests.conftest import tiny_cnn


def reference_gradients(model, x, units):
    """|d logit_u / d x| averaged over channels, by an independent GradientTape per unit."""
    x = tf.constant(x)
    maps, logits = [], []
    for k in range(units.shape[1]):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x, training=False)
            picked = tf.gather(out, units[:, k:k + 1], batch_dims=1)[:, 0]
        maps.append(tf.reduce_mean(tf.abs(tape.gradient(picked, x)), -1).numpy())
        logits.append(picked.numpy())
    return np.stack(logits, -1), np.stack(maps, -1)


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture
def units(images):
    return np.random.default_rng(2).integers(0, 5, (len(images), 2))


@pytest.mark.slow
def test_gradients_match_an_independent_tape(model, images, units):
    logits, maps = explain(gradients, model, images, units, batch_size=3, verbose=0)
    ref_logits, ref_maps = reference_gradients(model, images, units)
    assert logits.shape == (7, 2) and maps.shape == (7, 12, 12, 2)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-7)


def test_one_dimensional_y_explains_one_unit_per_sample(model, images, units):
    logits, maps = explain(gradients, model, images, units[:, 0], verbose=0)
    ref_logits, ref_maps = reference_gradients(model, images, units[:, :1])
    assert maps.shape == (7, 12, 12, 1)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)


def test_y_none_explains_every_unit_in_bounded_chunks(model, images):
    every = np.tile(np.arange(5), (len(images), 1))
    ref_logits, ref_maps = reference_gradients(model, images, every)
    # 5 units in chunks of 2: three steps per batch, the last padded and trimmed.
    logits, maps = explain(gradients, model, images, verbose=0, unit_chunk_size=2)
    assert maps.shape == (7, 12, 12, 5)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-7)


def test_gradients_cost_one_backward_pass_per_explained_unit(model, images):
    """K units -> K vector-Jacobian products, not a Jacobian over every output unit."""
    inputs, indices = tf.constant(images), tf.constant([[1, 3]] * len(images))
    graph = tf.function(lambda x, i: gradients(model, x, i)).get_concrete_function(
        inputs, indices).graph
    # One backward pass has as many Conv2DBackpropInput ops as conv layers above the
    # first one; counting them counts the passes.
    backprops = [op for op in graph.get_operations() if op.type == "Conv2DBackpropInput"]
    assert len(backprops) == 2 * 2  # 2 units x 2 conv layers


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


@pytest.mark.parametrize(
    "kind",
    ["numpy", "tensor", "dataset", "dataset_x_only", "generator", "pydataset",
     "pydataset_threads", "pydataset_processes"],
)
def test_every_input_type_gives_the_same_maps(model, images, units, kind):
    expected = explain(gradients, model, images, units, batch_size=3, verbose=0)
    args, kwargs = (), {}
    if kind == "numpy":
        args = (images, units)
    elif kind == "tensor":
        args = (tf.constant(images), tf.constant(units))
    elif kind == "dataset":
        args = (tf.data.Dataset.from_tensor_slices((images, units)).batch(3),)
    elif kind == "dataset_x_only":
        args = (tf.data.Dataset.from_tensor_slices(images).batch(3),)
        expected = explain(gradients, model, images, batch_size=3, verbose=0)
    elif kind == "generator":
        args = ((images[i:i + 3], units[i:i + 3]) for i in range(0, 7, 3)),
    elif kind == "pydataset":
        args = (Batches(images, units, 3),)
    elif kind == "pydataset_threads":
        args, kwargs = (Batches(images, units, 3),), {"workers": 2, "max_queue_size": 2}
    elif kind == "pydataset_processes":
        args = (Batches(images, units, 3),)
        kwargs = {"workers": 2, "use_multiprocessing": True}
    logits, maps = explain(gradients, model, *args, verbose=0, **kwargs)
    np.testing.assert_allclose(logits, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, expected[1], rtol=1e-5, atol=1e-7)


def test_steps_bounds_a_dataset_of_unknown_or_infinite_size(model, images, units):
    expected = explain(gradients, model, images[:6], units[:6], batch_size=3, verbose=0)
    infinite = tf.data.Dataset.from_tensor_slices((images, units)).batch(3).repeat()
    logits, maps = explain(gradients, model, infinite, steps=2, verbose=0)
    np.testing.assert_allclose(maps, expected[1], rtol=1e-5, atol=1e-7)
    unknown = tf.data.Dataset.from_tensor_slices((images, units)).filter(lambda *_: True)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    logits, maps = explain(gradients, model, unknown.batch(3), steps=2, verbose=0)
    np.testing.assert_allclose(maps, expected[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="infinite.*steps"):
        explain(gradients, model, infinite, verbose=0)


@pytest.mark.slow
def test_two_replicas_equal_one_device_in_input_order(images, units, mirrored_strategy):
    single = tiny_cnn(seed=3)
    with mirrored_strategy.scope():
        replicated = tiny_cnn(seed=3)
    assert replicated.distribute_strategy.num_replicas_in_sync == 2
    # 7 samples in batches of 3: batches 3, 3 and 1 -- none divides by 2 replicas.
    expected = explain(gradients, single, images, units, batch_size=3, verbose=0)
    got = explain(gradients, replicated, images, units, batch_size=3, verbose=0)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-7)
    # One sample on two replicas.
    one = explain(gradients, replicated, images[-1:], units[-1:], verbose=0)
    np.testing.assert_allclose(one[1], expected[1][-1:], rtol=1e-5, atol=1e-7)


def test_repeated_calls_reuse_the_compiled_step_by_default(model, images, units):
    traces = []

    def counting(model, inputs, indices, **params):
        traces.append(inputs.shape)  # Python side effects run only while tracing.
        return gradients(model, inputs, indices, **params)

    explain(counting, model, images, units, batch_size=3, verbose=0)  # 3, 3, 1
    assert len(traces) == 1, "every batch size must reuse one trace"
    explain(counting, model, images[:4], units[:4], batch_size=2, verbose=0)
    assert len(traces) == 1, "a second call reuses the step, as model.predict does"
    explain(counting, model, images, units, batch_size=3, verbose=0, force=True)
    assert len(traces) == 2, "force=True rebuilds the step"
    explain(counting, model, images, units[:, :1], verbose=0)
    assert len(traces) == 3, "another number of units is another signature"
    explain(counting, model, images, units[:, :1], verbose=0, gradient_filter="square")
    assert len(traces) == 4, "other parameters are another step"


@pytest.mark.slow
def test_the_second_call_of_a_shortcut_traces_nothing(images, units):
    model = tiny_cnn(seed=6)
    exposed = inspection.expose(model)
    for shortcut, explained in ((explain_lib.gradcam, exposed), (explain_lib.gradients, model)):
        shortcut(explained, images, units, verbose=0)
        shortcut.predicted(explained, images, top_k=2, verbose=0)
        with CountingTraces() as traced:
            shortcut(explained, images, units, verbose=0)
            shortcut.predicted(explained, images, top_k=2, verbose=0)
        assert traced.count == 0, shortcut.__name__


@pytest.mark.slow
def test_parameters_are_keyed_by_value_and_the_cache_is_bounded(model, images, units,
                                                                monkeypatch):
    def baseline():
        return np.full((12, 12, 3), 0.5, "float32")  # a new array of the same values

    explain(integrated_gradients, model, images, units, verbose=0, n_steps=2,
            baseline=baseline())
    with CountingTraces() as traced:
        explain(integrated_gradients, model, images, units, verbose=0, n_steps=2,
                baseline=baseline())
    assert traced.count == 0
    monkeypatch.setattr(explaining, "MAX_STEPS_PER_MODEL", 2)
    for _ in range(3):  # a new function each time: a new step each time
        explain(gradients, model, images[:1], units[:1], verbose=0, gradient_filter=lambda g: g)
    assert len(explaining._compiled_steps[model]) == 2


class CountingTraces:
    """Counts the traces made inside the block: the engine keeps each step traced, a
    concrete function that never traces again (a call it does not fit fails), so a trace is
    a step that was not there before."""

    def __enter__(self):
        self._before = _steps()
        return self

    def __exit__(self, *exc):
        steps = _steps()
        # (concrete functions: a graph each, and no tracing of their own)
        assert all(hasattr(step, "graph") and not hasattr(step, "get_concrete_function")
                   for step in steps)
        self.count = sum(all(step is not old for old in self._before) for step in steps)


def _steps():
    return [step for steps in explaining._compiled_steps.values() for step, _ in steps.values()]


def test_nothing_is_written_onto_the_model(images, units):
    model = tiny_cnn(seed=4)
    model(images[:1])
    before = dict(vars(model))
    explain(gradients, model, images, units, verbose=0, force=False)
    explain(gradients, model, images, units, verbose=0, force=True)
    after = vars(model)
    assert set(after) == set(before)
    assert all(after[k] is before[k] for k in before if k != "_jit_compile")


@pytest.mark.slow
def test_jit_compile_models_run_under_xla_with_the_same_maps(images, units):
    plain = tiny_cnn(seed=5)
    xla = tiny_cnn(seed=5)
    xla.compile(jit_compile=True)
    assert explaining._uses_xla(xla) and not explaining._uses_xla(plain)
    expected = explain(gradients, plain, images, units, verbose=0)
    got = explain(gradients, xla, images, units, verbose=0)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-6)


def test_run_eagerly_models_run_the_step_eagerly(images, units):
    model = tiny_cnn(seed=6)
    model.compile(run_eagerly=True)
    seen = []

    def recording(model, inputs, indices, **params):
        seen.append(tf.executing_eagerly())
        return gradients(model, inputs, indices, **params)

    _, maps = explain(recording, model, images, units, verbose=0)
    assert seen and all(seen)
    np.testing.assert_allclose(maps, reference_gradients(model, images, units)[1], rtol=1e-4,
                               atol=1e-7)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_predict_begin(self, logs=None):
        self.events.append("begin")

    def on_predict_batch_begin(self, batch, logs=None):
        self.events.append(("batch_begin", batch))

    def on_predict_batch_end(self, batch, logs=None):
        logits, maps = logs["outputs"]
        self.events.append(("batch_end", batch, logits.shape, maps.shape))

    def on_predict_end(self, logs=None):
        self.events.append("end")


def test_callbacks_see_every_batch_and_its_outputs(model, images, units):
    recorder = Recorder()
    explain(gradients, model, images, units, batch_size=3, verbose=0, callbacks=[recorder])
    assert recorder.events == [
        "begin",
        ("batch_begin", 0), ("batch_end", 0, (3, 2), (3, 12, 12, 2)),
        ("batch_begin", 1), ("batch_end", 1, (3, 2), (3, 12, 12, 2)),
        ("batch_begin", 2), ("batch_end", 2, (1, 2), (1, 12, 12, 2)),
        "end",
    ]


def test_verbose_shows_a_progress_bar(model, images, units, capsys):
    explain(gradients, model, images, units, batch_size=3, verbose=0)
    assert "3/3" not in capsys.readouterr().out
    explain(gradients, model, images, units, batch_size=3, verbose=1)
    assert "3/3" in capsys.readouterr().out
    explain(gradients, model, images, units, batch_size=3)  # "auto", several batches
    assert "3/3" in capsys.readouterr().out


def coarse(model, inputs, indices, spatial_axis=(-3, -2), scale=1.0):
    """A stand-in method with 4x coarser maps: the mean input over 3x3 cells, times scale."""
    logits = tf.gather(model(inputs, training=False), indices, batch_dims=1)
    cells = tf.nn.avg_pool2d(tf.reduce_mean(inputs, -1, keepdims=True), 3, 3, "VALID")
    return logits, scale * tf.repeat(cells, indices.shape[-1], axis=-1)


def test_parameters_are_routed_to_step_and_method(model, images, units):
    _, raw = explain(coarse, model, images, units, verbose=0, resizing=False)
    assert raw.shape == (7, 4, 4, 2)
    _, scaled = explain(coarse, model, images, units, verbose=0, resizing=False, scale=-2.0)
    np.testing.assert_allclose(scaled, -2 * raw, rtol=1e-6)
    _, normalized = explain(coarse, model, images, units, verbose=0, resizing=False,
                            scale=-2.0, postprocessing=filters.negative_normalize)
    np.testing.assert_allclose(normalized, filters.normalize(2 * raw).numpy(), atol=1e-6)
    _, resized = explain(coarse, model, images, units, verbose=0)
    assert resized.shape == (7, 12, 12, 2)
    np.testing.assert_allclose(resized, tf.image.resize(raw, (12, 12)).numpy(), atol=1e-6)
    _, sized = explain(coarse, model, images, units, verbose=0, resizing=(8, 6))
    assert sized.shape == (7, 8, 6, 2)
    _, square = explain(gradients, model, images, units, verbose=0,
                        gradient_filter=tf.square)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        picked = tf.gather(model(x), units[:, :1], batch_dims=1)
    expected = tf.reduce_mean(tf.square(tape.gradient(picked, x)), -1).numpy()
    np.testing.assert_allclose(square[..., 0], expected, rtol=1e-4, atol=1e-9)


def test_explain_step_post_processes_then_resizes(model, images, units):
    inputs, indices = tf.constant(images), tf.constant(units)
    logits, maps = explain_step(model, coarse, (inputs, indices), scale=-1.0,
                                postprocessing=filters.negative)
    _, raw = coarse(model, inputs, indices)
    np.testing.assert_allclose(maps, tf.image.resize(raw, (12, 12)).numpy(), atol=1e-6)


def test_partial_explain_sets_defaults_that_calls_can_override(model, images, units):
    coarse_explain = partial_explain(coarse, resizing=False, scale=3.0)
    assert coarse_explain.__name__ == "coarse_explain"
    _, maps = coarse_explain(model, images, units, verbose=0)
    _, raw = explain(coarse, model, images, units, verbose=0, resizing=False)
    np.testing.assert_allclose(maps, 3 * raw, rtol=1e-6)
    _, maps = coarse_explain(model, images, units, verbose=0, scale=1.0)
    np.testing.assert_allclose(maps, raw, rtol=1e-6)


def test_gradients_shortcut_normalises_each_map(model, images, units):
    logits, maps = explain_lib.gradients(model, images, units, verbose=0)
    ref_logits, ref_maps = reference_gradients(model, images, units)
    np.testing.assert_allclose(maps, filters.normalize(ref_maps).numpy(), atol=1e-5)
    assert maps.max(axis=(1, 2)).min() == pytest.approx(1.0)


def test_video_like_inputs_with_explicit_spatial_axis(model):
    # (batch, time, H, W, C): the model sees one frame at a time via a TimeDistributed head.
    inputs = keras.Input((2, 12, 12, 3))
    video = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(
        keras.layers.TimeDistributed(model)(inputs)))
    clips = np.random.default_rng(3).uniform(size=(3, 2, 12, 12, 3)).astype("float32")
    _, maps = explain(gradients, video, clips, [1, 2, 3], verbose=0,
                      spatial_axis=(-3, -2), resizing=(24, 24))
    assert maps.shape == (3, 2, 24, 24, 1)
    _, volume = explain(gradients, video, clips, [1, 2, 3], verbose=0,
                        spatial_axis=(1, 2, 3), resizing=(4, 6, 6))
    assert volume.shape == (3, 4, 6, 6, 1)


class TestErrors:
    def test_x_and_y_lengths_differ(self, model, images, units):
        with pytest.raises(ValueError, match="x has 7 samples, y has 5"):
            explain(gradients, model, images, units[:5], verbose=0)

    def test_unit_out_of_range(self, model, images):
        with pytest.raises(ValueError, match=r"\[5, 9\] are out of range.*\[0, 4\]"):
            explain(gradients, model, images, [0, 1, 5, 2, 9, 1, 1], verbose=0)
        with pytest.raises(ValueError, match=r"\[-1\] are out of range"):
            explain(gradients, model, images, [0, 1, -1, 2, 3, 1, 1], verbose=0)

    def test_y_of_the_wrong_shape_per_batch(self, model, images, units):
        dataset = tf.data.Dataset.from_tensor_slices((images, units[:, None, :])).batch(3)
        with pytest.raises(ValueError, match=r"give unit indices of shape \(3,\) or \(3, K\)"):
            explain(gradients, model, dataset, verbose=0)

    def test_inputs_that_do_not_fit_spatial_axis(self, model, images):
        with pytest.raises(ValueError, match=r"shape \(12, 12, 3\).*Add a batch axis"):
            explain(gradients, model, tf.data.Dataset.from_tensor_slices(images), verbose=0)
        with pytest.raises(ValueError, match="neither the batch axis"):
            explain(gradients, model, images, verbose=0, spatial_axis=(-2, -1))

    def test_method_returning_maps_of_the_wrong_shape(self, model, images, units):
        def flat(model, inputs, indices, **_):
            return tf.gather(model(inputs), indices, batch_dims=1), tf.reduce_mean(inputs, -1)

        with pytest.raises(ValueError, match=r"Method flat returned maps of shape.*expected"):
            explain(flat, model, images, units, verbose=0)

    def test_empty_input(self, model):
        with pytest.raises(ValueError, match="x is empty"):
            explain(gradients, model, np.zeros((0, 12, 12, 3), "float32"), verbose=0)
        with pytest.raises(ValueError, match="x is empty"):
            explain(gradients, model, iter([]), verbose=0)

    def test_generators_cannot_have_several_workers(self, model, images):
        with pytest.raises(ValueError, match="PyDataset"):
            explain(gradients, model, iter([images]), verbose=0, workers=2)

    def test_y_with_a_dataset(self, model, images, units):
        with pytest.raises(ValueError, match=r"yield \(x, y\) batches"):
            explain(gradients, model, tf.data.Dataset.from_tensor_slices(images).batch(2),
                    units, verbose=0)


@pytest.mark.slow
def test_every_unit_of_a_thousand_unit_model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1000)])
    x = np.random.default_rng(4).uniform(size=(3, 6, 6, 2)).astype("float32")
    logits, maps = explain(gradients, model, x, verbose=0)
    assert logits.shape == (3, 1000) and maps.shape == (3, 6, 6, 1000)
    np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-6)
    for unit in (0, 15, 16, 999):  # chunk edges, and the padded last chunk
        _, ref = reference_gradients(model, x, np.full((3, 1), unit))
        np.testing.assert_allclose(maps[..., unit], ref[..., 0], rtol=1e-4, atol=1e-8)
