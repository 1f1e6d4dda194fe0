"""Helpers shared by several method modules: a method's parameters, the model's logits, the
score a perturbation is judged by, one backward pass per explained unit, and the random
generator.

Usage:

    logits = logits_of(model, inputs)                       # (B, U)
    scores = scores_of(logits, "probability")               # softmax (sigmoid for one unit)
    maps = unit_maps(tape, logits, inputs, lambda grad: tf.reduce_sum(grad * inputs, -1))
"""

import collections.abc
import inspect
import types
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from explain_lib import inspection, utils
from explain_lib.utils import ExplainError

RANDOM_ALGORITHM = "philox"
"""The stateless generator of noise and masks, named rather than "auto_select" (whose choice
may differ between devices). Draws depend only on the seed, on CPU and GPU alike; under XLA
(`jit_compile`) they are other draws of the same distribution."""

SCORES = ("probability", "logit")
"""What perturbation methods (Score-CAM, RISE, occlusion) weigh: the unit's probability
(softmax over the units, as their papers do) or its raw logit."""


METHOD_ARGUMENTS = ("model", "inputs", "indices", "spatial_axis")
"""What every method takes from its caller, the engine: not parameters of the method."""


def parameters_of(method: Callable, given: Sequence[str] = METHOD_ARGUMENTS
                  ) -> Tuple[Dict[str, Any], bool]:
    """A method's own parameters, read from its signature: `({name: default}, whether it
    takes any other keyword too)`. The arguments its caller gives (`given`: for a method,
    `METHOD_ARGUMENTS`) are left out; a parameter without a default maps to
    `inspect.Parameter.empty`.

    Usage:

        parameters_of(integrated_gradients)[0]
        # {'baseline': 0.0, 'n_steps': 32, 'chunk_size': 8, 'blur_sigma': None}
    """
    parameters, open_ended = {}, False
    for parameter in inspect.signature(method).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL and (
            parameter.name not in given
        ):
            parameters[parameter.name] = parameter.default
    return parameters, open_ended


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text",
               list: "a list", type(None): "null"}
"""The kinds of JSON values (what the job's `--method_params` and `--metric_params` hold)."""


def _accepted_kinds(annotation, default) -> Optional[Tuple[type, ...]]:
    """The JSON kinds a parameter takes, from its annotation, else from its default's kind;
    None when that cannot be told (an array, a function, anything else: left to the
    function to judge)."""
    if annotation is inspect.Parameter.empty:
        kind = type(default)
        return (kind,) if kind in (bool, int, float, str) else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [_accepted_kinds(member, None) for member in typing.get_args(annotation)]
        return None if None in kinds else tuple(k for found in kinds for k in found)
    if annotation in _KIND_NAMES:
        return (annotation,)
    if annotation in (tuple, list) or typing.get_origin(annotation) in (
            tuple, list, collections.abc.Sequence):
        return (list,)
    return None


def _fits(value, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def check_parameter_kinds(owner: str, function: Callable, params: Dict[str, Any],
                          given: Sequence[str] = METHOD_ARGUMENTS) -> None:
    """Refuse a parameter value of a JSON kind (a number, text, true or false, null, a list)
    that the parameter does not take, by its annotation (or its default's kind when it has
    none): a ValueError naming `owner`, the parameter and the value, before any work. Other
    values (arrays, tensors, functions) are left to `function`.

    Usage:

        check_parameter_kinds("deletion", deletion, {"n_steps": "many"}, given)
        # ValueError: deletion's parameter n_steps takes an integer, not 'many'.
    """
    signature = inspect.signature(function).parameters
    for name, value in params.items():
        parameter = signature.get(name)
        if parameter is None or name in given or type(value) not in _KIND_NAMES:
            continue
        kinds = _accepted_kinds(parameter.annotation, parameter.default)
        if kinds and not any(_fits(value, kind) for kind in kinds):
            expected = " or ".join(dict.fromkeys(_KIND_NAMES[kind] for kind in kinds))
            raise ExplainError(f"{owner}'s parameter {name} takes {expected}, not {value!r}.")


def logits_of(model: keras.Model, inputs: tf.Tensor) -> tf.Tensor:
    """The model's logits: its output, or its first output for an exposed model."""
    outputs = model(inputs, training=False)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def scores_of(logits: tf.Tensor, score: str) -> tf.Tensor:
    """The scores (B, U) a perturbation method weighs: `"probability"`, the softmax of the
    logits over the units (the sigmoid for a model with one output unit, whose softmax would
    be 1 whatever the input), or `"logit"`, the logits themselves.

    The models explained here output logits (no softmax layer), as the methods' references
    assume when they apply the softmax themselves.
    """
    # Probabilities of a model computing in half precision are taken in float32.
    logits = tf.cast(logits, tf.float32) if logits.dtype in (tf.float16, tf.bfloat16) else logits
    if check_score(score) == "logit":
        return logits
    return inspection.probabilities_of(logits)


def check_score(score: str) -> str:
    """`score` if it names one of `SCORES`; a ValueError saying which it may name otherwise."""
    if score not in SCORES:
        raise ExplainError(f"score must be one of {', '.join(SCORES)}, not {score!r}.")
    return score


def unit_maps(tape: tf.GradientTape, logits: tf.Tensor, sources, to_map: Callable):
    """For each explained unit, one backward pass reduced at once by `to_map`; the results
    stacked on a new last axis (a structure of results is stacked leaf by leaf).

    Samples are independent in inference, so the gradient of a column's sum is each
    sample's own gradient. Pass k starts only once result k-1 exists, so one unit's
    gradients are alive at a time: the methods whose passes cover a whole chunk of input
    copies rely on it to bound their memory.

    Usage:

        maps = unit_maps(tape, logits, inputs, lambda grad: tf.reduce_sum(grad * inputs, -1))
    """
    units = logits.shape[-1]
    if units is None:
        raise ExplainError(
            f"The number of explained units must be static, got logits of shape {logits.shape}."
        )
    results = []
    for k in range(units):
        seed = tf.one_hot(tf.fill(tf.shape(logits)[:1], k), units, dtype=logits.dtype)
        with tf.control_dependencies(tf.nest.flatten(results[-1:])):
            results.append(to_map(tape.gradient(logits, sources, output_gradients=seed)))
    return tf.nest.map_structure(lambda *maps: tf.stack(maps, axis=-1), *results)


def by_name(value, table: Dict[str, Callable], parameter: str) -> Callable:
    """A function given itself or by its name in `table`."""
    if callable(value):
        return value
    if value not in table:
        raise ExplainError(
            f"Unknown {parameter} {value!r}: use one of {', '.join(table)}, or a function."
        )
    return table[value]


def image_size(inputs: tf.Tensor, spatial_axis: Sequence[int], method: str) -> Tuple[int, int]:
    """(H, W) of images (B, H, W, C) of static size, or an error naming `method`."""
    rank = inputs.shape.rank
    if rank is None or utils.positive_axes(spatial_axis, rank) != (rank - 3, rank - 2):
        raise ExplainError(
            f"{method} explains images (B, H, W, C) with spatial_axis=(-3, -2); got inputs of "
            f"shape {tuple(inputs.shape)} and spatial_axis={tuple(spatial_axis)}."
        )
    height, width = inputs.shape[-3], inputs.shape[-2]
    if height is None or width is None:
        raise ExplainError(f"{method} needs inputs of static height and width, got {inputs.shape}.")
    return height, width


__all__ = [
    "by_name",
    "image_size",
    "METHOD_ARGUMENTS",
    "check_parameter_kinds",
    "RANDOM_ALGORITHM",
    "SCORES",
    "check_score",
    "logits_of",
    "parameters_of",
    "scores_of",
    "unit_maps",
]
