"""Evaluating: `evaluate` is to a metric what `explain` is to a method, and runs the same
loop (`engine.loop`: the data adapter, the cache of compiled steps, their distribution
across replicas, the callbacks).

This module owns what is particular to evaluating:
- `explain_lib.metrics` holds the metrics, each a function of one batch
  `(model, inputs, units, maps, [ground_truth], **params) -> scores (B, K)`, and the
  registry that declares what each needs (a model? maps? ground truth? a method?).
- `_make_step` builds, once per model, metric, parameters, preprocessing and input
  signature (kept in `loop.STEPS`), the compiled step that makes the model's inputs of the
  batch (`loop.model_inputs`: uint8 pixels cast to floatx, then `preprocessing`, as
  `explain`'s step does), turns boxes into masks and runs the metric on every replica, on
  the model `explain` explains (`loop.explained_model`).
- `_Evaluating`, the state of one call, checks each batch (images, units, maps and the
  ground truth, aligned per sample; or a dataset's dicts) and runs its step.
- `evaluate` checks everything before any work (the metric's parameters, what it needs,
  the shapes) and runs the loop. A metric that explains by itself (`model_randomization`)
  gets the data, the loop's batch size and `explain` itself, which it calls.
"""

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib.engine import data as data_adapter
from explain_lib.engine import explaining, loop
from explain_lib.engine.loop import MAX_STEPS_PER_MODEL, STEPS
from explain_lib.methods.common import check_parameter_kinds
from explain_lib.metrics import common, registry
from explain_lib.metrics.registry import Metric

_compiled_steps = STEPS.section("evaluate")
"""The compiled evaluate steps of every model: model -> {key: (step, parameters)}."""

PER_SAMPLE_KEYS = ("x", "y", "maps", "boxes", "masks")
"""What a dataset given to `evaluate` yields in each batch (a dict with some of these)."""


def check_metric_params(metric: Metric, params: Dict[str, Any]) -> None:
    """Refuse, before any work, parameters that would not reach the metric.

    Raises a ValueError naming the metric's parameters when one of `params` is not among
    them (unless the metric takes `**kwargs`), when it is one the engine gives itself, or
    when its value is of a kind the parameter does not take (`check_parameter_kinds`).
    """
    registry.check_parameter_names(metric)
    given = sorted(set(params) & set(metric.given))
    if given:
        raise ValueError(
            f"{', '.join(given)} cannot be given as parameters of {metric.name}: evaluate "
            "passes the model, each batch of inputs, units, maps and ground truth itself."
        )
    unknown = sorted(set(params) - set(metric.parameters))
    if unknown and not metric.open_ended:
        known = ", ".join(metric.parameters) or "none"
        raise ValueError(
            f"Unknown parameter(s) {', '.join(unknown)} for {metric.name}: it takes {known} "
            "(and evaluate itself the arguments of model.evaluate's loop, maps, boxes and "
            "masks)."
        )
    check_parameter_kinds(metric.name, metric.function, params, metric.given)


def _metric_of(metric) -> Metric:
    """The registry's entry for a name, entry or function; an unregistered function is a
    per-batch metric that needs a model and maps (and ground truth if it takes it)."""
    if isinstance(metric, (str, Metric)) or not callable(metric):
        return registry.get(metric)
    for entry in registry.REGISTRY.values():
        if entry.function is metric:
            return entry
    return Metric(getattr(metric, "__name__", repr(metric)), metric,
                  ground_truth="ground_truth" in inspect.signature(metric).parameters)


def _check_needs(metric: Metric, model, given: set) -> None:
    """Refuse a missing model, maps or ground truth, and ground truth or maps given to a
    metric that does not use them; `given` names what came with the inputs (among "maps",
    "boxes", "masks")."""
    name = metric.name
    if metric.needs_model and model is None:
        raise ValueError(f"{name} evaluates the model's scores: pass the model.")
    if metric.takes_method and "maps" in given:
        raise ValueError(
            f"{name} explains with its `method` itself (on the model and on each "
            "re-initialised copy): pass method=..., not maps."
        )
    if metric.needs_maps and "maps" not in given and not metric.takes_method:
        raise ValueError(f"{name} evaluates maps: pass maps (N, h, w, K), one per unit.")
    if {"boxes", "masks"} <= given:
        raise ValueError("Pass the ground truth as boxes or as masks, not both.")
    truth = bool(given & {"boxes", "masks"})
    if metric.ground_truth and not truth:
        raise ValueError(
            f"{name} needs ground truth: boxes (N, M, 4), (ymin, xmin, ymax, xmax) in [0, 1] "
            "padded with NaN rows (or a list of (m_i, 4) arrays), or masks (N, H, W)."
        )
    if truth and not metric.ground_truth:
        users = ", ".join(m.name for m in registry.REGISTRY.values() if m.ground_truth)
        raise ValueError(
            f"{name} does not use ground truth: leave boxes and masks out (the localisation "
            f"metrics take them: {users})."
        )


def _given(**values) -> set:
    return {key for key, value in values.items() if value is not None}


def _compiled_step(model, metric: Metric, params, specs: Tuple[tf.TensorSpec, ...],
                   truth: Optional[str], scores: str = "logits",
                   preprocessing: Optional[Callable] = None) -> Callable:
    """The step for this model (None: a metric that needs none, on one device), metric,
    parameters, input signature, `scores` (see `loop.explained_model`) and `preprocessing`
    (see `loop.model_inputs`): built and traced on first use, then reused."""
    key = (metric.function, loop.freeze(params), truth,
           tuple((tuple(s.shape[1:]), s.dtype) for s in specs), scores, preprocessing)

    # Built traced (`loop.trace`): a value the metric refuses raises its own message now.
    # The params are kept with the step so that identity-keyed values stay alive.
    return STEPS.get(model, "evaluate", key, lambda: _make_step(
        model, metric, params, specs, truth, scores, preprocessing), keep=params,
        limit=MAX_STEPS_PER_MODEL)


def _make_step(model, metric: Metric, params, specs, truth, scores: str,
               preprocessing: Optional[Callable]) -> Callable:
    # The metric scores what `explain` explains: a softmax head's scores before it, by
    # default (the model and its explained one are referred to weakly, as explain's steps
    # refer to them).
    model_ref = (lambda: None) if model is None else weakref.ref(
        loop.explained_model(model, scores)[0])
    function = metric.function
    size = tuple(specs[0].shape[1:3])

    def replica_step(inputs, units, maps, *ground_truth):
        inputs = loop.model_inputs(inputs, preprocessing)
        extra = {}
        if truth == "boxes":
            extra["ground_truth"] = common.boxes_to_masks(ground_truth[0], size)
        elif truth == "masks":
            extra["ground_truth"] = ground_truth[0]
        return (tf.cast(function(model_ref(), inputs, units, maps, **extra, **params),
                        tf.float32),)

    signature = [tf.TensorSpec((None, *s.shape[1:]), s.dtype) for s in specs]
    if model is not None:
        return loop.compile_distributed(model, replica_step, signature)
    # Without a model there is no strategy to follow: one device, compiled all the same.
    return loop.trace(tf.function(replica_step, input_signature=signature))


def check_evaluate(metric, model, input_shape, map_shape, units: int = 1,
                   ground_truth: Optional[str] = None, scores: str = "logits",
                   preprocessing: Optional[Callable] = None, input_dtype=None,
                   **metric_params) -> None:
    """Check, before any work, that `evaluate` can run `metric` with `metric_params` on
    `model` for images of `input_shape` (H, W, C) and `input_dtype` (floatx by default;
    "uint8" for pixels) and maps of `map_shape` (h, w), `units` per image, with ground
    truth given as "boxes", "masks" or None, and `preprocessing`: the parameters reach the
    metric, it has what it needs, and its compiled step traces on a symbolic batch, which
    runs the metric's own checks of its parameter values. Nothing is computed; the traced
    step is cached for the calls that follow.

    Usage:

        check_evaluate("deletion", model, (224, 224, 3), (7, 7), n_steps=0)
        # ValueError: deletion needs n_steps >= 1 ...

    Raises:
        ValueError: (or the TypeError of a malformed value) with what is wrong.
    """
    metric = _metric_of(metric)
    check_metric_params(metric, metric_params)
    if metric.takes_method:
        raise ValueError(f"{metric.name} explains by itself: there is no per-batch step to "
                         "check.")
    if not metric.ground_truth:
        ground_truth = None  # one set of options may serve every metric, as one dataset does
    _check_needs(metric, model, {"maps"} | ({ground_truth} if ground_truth else set()))
    explaining.check_preprocessing(preprocessing)
    floatx = keras.config.floatx()
    specs = [tf.TensorSpec((None, *input_shape), input_dtype or floatx),
             tf.TensorSpec((None, units), tf.int32),
             tf.TensorSpec((None, *map_shape, units), tf.float32)]
    if ground_truth == "boxes":
        specs.append(tf.TensorSpec((None, None, 4), tf.float32))
    elif ground_truth == "masks":
        specs.append(tf.TensorSpec((None, *input_shape[:2]), tf.float32))
    _compiled_step(model if metric.needs_model else None, metric, metric_params, tuple(specs),
                   ground_truth, scores, preprocessing)


def _as_array(value, name: str) -> np.ndarray:
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{name} must be an array of numbers, got an array of objects.")
    return array


def _parse(batch) -> data_adapter.Batch:
    """A batch of a stream given to `evaluate`: a dict with key x and some of the others of
    `PER_SAMPLE_KEYS`."""
    if not isinstance(batch, dict) or "x" not in batch:
        raise ValueError(
            "A dataset given to evaluate yields dicts with key x and some of "
            f"{', '.join(PER_SAMPLE_KEYS[1:])}; got {type(batch).__name__}."
        )
    unknown = sorted(set(batch) - set(PER_SAMPLE_KEYS))
    if unknown:
        raise ValueError(f"Unknown key(s) {', '.join(unknown)} in a batch: use "
                         f"{', '.join(PER_SAMPLE_KEYS)}.")
    return {key: batch.get(key) for key in PER_SAMPLE_KEYS}


def _batch_tensors(metric: Metric, model, batch, preprocessing: Optional[Callable] = None
                   ) -> Tuple[List[tf.Tensor], Optional[str]]:
    """The step's tensors (inputs in their own dtype, units (B, K), maps (B, h, w, K)[,
    ground truth]) from a batch, each checked with an error that says what to fix."""
    name = metric.name
    inputs = loop.batch_tensor(batch["x"])
    if inputs.shape.rank != 4:
        raise ValueError(
            f"{name} evaluates images (N, H, W, C); got x of shape {tuple(inputs.shape)}. "
            "Add a batch axis (x[None]) for a single image."
        )
    count = int(inputs.shape[0])
    maps = np.asarray(batch["maps"], np.float32)
    if maps.ndim == 3:
        maps = maps[..., None]  # one map per sample: one unit
    if maps.ndim != 4:
        raise ValueError(
            f"maps of shape {maps.shape} for inputs of shape {tuple(inputs.shape)}: give one "
            "map per explained unit, (N, h, w, K) (what explain returns), or (N, h, w)."
        )
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"maps hold non-finite values (NaN or inf): {name} cannot order or "
                         "sum them. Check the method's output.")
    if metric.nonnegative_maps and maps.size and maps.min() < 0:
        raise ValueError(
            f"{name} measures the share of each map's energy, so maps must not be negative "
            f"(the smallest is {maps.min():.3g}): post-process them with "
            "filters.positive_normalize or filters.absolute_normalize (the methods' "
            "conventional post-processing does)."
        )
    units = _units(batch["y"], model, inputs, count, maps.shape[-1], preprocessing)
    if units.shape[1] != maps.shape[-1]:
        raise ValueError(
            f"{units.shape[1]} unit(s) per sample but {maps.shape[-1]} map(s): maps "
            "(N, h, w, K) hold one map per explained unit in y (N, K)."
        )
    tensors = [inputs, tf.constant(units), tf.constant(maps)]
    truth = None
    if batch["boxes"] is not None:
        boxes = np.asarray(batch["boxes"], np.float32)
        if boxes.ndim == 2 and boxes.shape[-1] == 4:
            boxes = boxes[:, None]
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes of shape {boxes.shape}: give (N, M, 4) boxes per batch.")
        tensors.append(tf.constant(boxes))
        truth = "boxes"
    elif batch["masks"] is not None:
        masks = np.asarray(batch["masks"], np.float32)
        if masks.ndim == 4 and masks.shape[-1] == 1:
            masks = masks[..., 0]
        if masks.shape[1:] != tuple(inputs.shape[1:3]):
            raise ValueError(
                f"masks of shape {masks.shape} for inputs of shape {tuple(inputs.shape)}: "
                "give one (H, W) mask per sample, at the inputs' size."
            )
        tensors.append(tf.constant(masks))
        truth = "masks"
    return tensors, truth


def _units(y, model, inputs, count: int, width: int,
           preprocessing: Optional[Callable] = None) -> np.ndarray:
    """The explained units (count, K): `y` checked against the model, or every unit (the
    maps' units, when no model is needed)."""
    if model is None:
        if y is None:
            return np.broadcast_to(np.arange(width, dtype=np.int32), (count, width))
        y = np.asarray(y)
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != count:
            raise ValueError(f"y of shape {y.shape} does not fit a batch of {count} inputs.")
        return y.astype(np.int32)
    return loop.unit_indices(y, count, loop.units_of(model, inputs, preprocessing))


def evaluate(
    metric: Union[str, Callable, Metric],
    model: Optional[keras.Model],
    x,
    y=None,
    maps=None,
    boxes=None,
    masks=None,
    batch_size: Optional[int] = None,
    verbose: Union[str, int] = "auto",
    steps: Optional[int] = None,
    callbacks: Optional[List[keras.callbacks.Callback]] = None,
    force: bool = False,
    scores: str = "logits",
    preprocessing: Optional[Callable] = None,
    **metric_params,
):
    """Score how faithful `maps` of `model` for `x` are with a `metric`.

    Usage:

        logits, maps = explain_lib.gradcam(model, x, y)
        scores = evaluate("deletion", model, x, y, maps, n_steps=100)       # (N, 1)
        hits = evaluate("pointing_game", None, x, y, maps, boxes=boxes)      # (N, 1) of 0/1
        table = evaluate("model_randomization", model, x, y, method="gradcam")

    Args:
        metric: a registered metric's name (`explain_lib.metrics.REGISTRY`), its entry, or a
            metric function `(model, inputs, units, maps, **params) -> (B, K)`.
        model: the model the maps explain (its strategy distributes the work); None for
            metrics that need none (the localisation metrics).
        x: images (N, H, W, C), an array or tensor; or a batched `tf.data.Dataset` (or a
            generator) of dicts with keys among x, y, maps, boxes, masks (one dataset can
            serve every metric: the ground truth is left out for metrics without use for it).
        y: the explained units, (N,) or (N, K), one map each; None: every unit of the
            model (or, without a model, one per map).
        maps: (N, h, w, K) one map per sample and unit, at any resolution (resized to the
            input's bilinearly), or (N, h, w) for one unit; what `explain` returns.
        boxes: ground truth for the localisation metrics: (N, M, 4) boxes `(ymin, xmin,
            ymax, xmax)` in [0, 1] (TFDS), padded with NaN rows or rows of zero area, or a
            ragged set (a list of (m_i, 4) arrays, a `tf.RaggedTensor`, a numpy masked
            array). Batched alongside x.
        masks: ground truth as masks (N, H, W) at the inputs' size (instead of boxes).
        batch_size: samples per step for arrays (default 32).
        verbose: "auto" (a progress bar when there is more than one batch), 0 or 1.
        steps: the number of batches to read.
        callbacks: Keras callbacks, called as `predict` calls them (`on_predict_batch_end`
            gets `logs={"outputs": scores}`).
        force: rebuild everything the engine built for this model, as `explain`'s.
        scores: what the metric scores, as for `explain`: "logits" (the default: a model
            ending in a softmax or sigmoid is scored on its scores before it, by a
            probability that is the model's own) or "output" (its output as it is).
        preprocessing: as for `explain`: a function of the float images (TF ops) run in
            the step before the metric, which scores the model on its output; uint8 images
            are cast to floatx in the step either way.
        **metric_params: the metric's parameters (`n_steps=100`, `tolerance=0`, ...), which
            it must take: checked before any work.

    Returns:
        numpy (N, K) float32 scores, one per sample and unit (NaN where a localisation
        metric has no ground truth); for `model_randomization`, its table (a DataFrame).

    Raises:
        ValueError: with what is wrong and how to fix it, for a parameter the metric does
            not take, a missing model, maps or ground truth (or one given to a metric that
            does not use it), mismatched lengths or shapes, non-finite maps, negative maps
            for the energy pointing game, empty inputs.
    """
    metric = _metric_of(metric)
    check_metric_params(metric, metric_params)
    explaining.check_preprocessing(preprocessing)
    streaming = data_adapter.is_stream(x)
    if not streaming:  # a stream's batches are checked as they come
        _check_needs(metric, model, _given(maps=maps, boxes=boxes, masks=masks))
    elif model is None and metric.needs_model:
        _check_needs(metric, model, set())
    if metric.takes_method:
        explain = (explaining.explain if preprocessing is None else functools.partial(
            explaining.explain, preprocessing=preprocessing))
        return metric.function(model, x, y, batch_size=batch_size,
                               verbose=0 if verbose == "auto" else verbose,
                               explain=explain, **metric_params)
    if streaming:
        if any(v is not None for v in (y, maps, boxes, masks)):
            raise ValueError(
                "When x is a dataset or generator, it yields everything per sample: dicts "
                f"with keys among {', '.join(PER_SAMPLE_KEYS)} (y, maps, boxes and masks "
                "must then be None)."
            )
    else:
        x = x if isinstance(x, tf.Tensor) else _as_array(x, "x")
        y, maps, masks = _as_array(y, "y"), _as_array(maps, "maps"), _as_array(masks, "masks")
        boxes = None if boxes is None else common.pad_boxes(boxes)
    evaluating = _Evaluating(metric, model, metric_params, scores, streaming, preprocessing)
    (results,) = loop.run(model, x, {"y": y, "maps": maps, "boxes": boxes, "masks": masks},
                          loop.Loop(batch_size, verbose, steps, callbacks, force=force),
                          evaluating.batch, parse=_parse, purpose="evaluate")
    return results


@dataclass
class _Evaluating:
    """One call of `evaluate`: what every batch of the loop needs."""

    metric: Metric
    model: Optional[keras.Model]
    params: Dict[str, Any]
    scores: str
    streaming: bool
    """Whether the batches come from a stream, whose batches are checked as they come."""
    preprocessing: Optional[Callable] = None

    def batch(self, batch: data_adapter.Batch
              ) -> Tuple[Tuple[np.ndarray], Dict[str, Any]]:
        """One batch's scores (B, K), and the logs the callbacks get (`outputs`)."""
        metric, model = self.metric, self.model
        if self.streaming:
            if not metric.ground_truth:  # one dataset may serve every metric
                batch["boxes"] = batch["masks"] = None
            _check_needs(metric, model, _given(maps=batch["maps"], boxes=batch["boxes"],
                                               masks=batch["masks"]))
        tensors, truth = _batch_tensors(metric, model, batch, self.preprocessing)
        specs = tuple(tf.TensorSpec.from_tensor(t) for t in tensors)
        step = _compiled_step(model, metric, self.params, specs, truth, self.scores,
                              self.preprocessing)
        (batch_scores,) = step(*tensors)
        batch_scores = batch_scores.numpy()
        return (batch_scores,), {"outputs": batch_scores}


__all__ = ["check_evaluate", "check_metric_params", "evaluate"]
