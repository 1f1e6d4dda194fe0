"""What the launcher checks before any work: the model, loaded once, against the settings.

`inspect_model` reads the model's input size and number of units (`ModelInfo`) and traces
the method and each metric on a symbolic batch, so that what the workers would find out on
every record fails at once, in one line.

Usage:

    info = inspect_model(settings)
    info.input_shape, info.num_units
"""

from dataclasses import dataclass
from typing import (
    Optional,
    Tuple,
)

import keras

from explain_lib import methods
from explain_lib.engine import evaluating, explaining
from pipeline.settings import Settings
from pipeline.worker.explaining import explain_arguments
from pipeline.worker.models import exposed, shared_model


@dataclass(frozen=True)
class ModelInfo:
    """What the launcher needs to know of the model: its input shape (H, W, C), entries
    None when the model takes any size, and its number of output units."""

    input_shape: Tuple[Optional[int], Optional[int], Optional[int]]
    num_units: int


def inspect_model(settings: Settings, model: Optional[keras.Model] = None) -> ModelInfo:
    """Load the model once (in the launcher; or take `model`) to read its input shape and
    number of units, and check everything the workers would otherwise find out on every
    record: that the model takes one (H, W, C) image input and its first output is (batch,
    units); that `top_k` does not exceed its units; that the method can expose
    `activation_layer` and runs with its parameters, giving the units' probabilities
    (`explaining.check_explain` traces it on a symbolic batch of `image_size`, or the
    model's size, without computing anything); and that each metric runs with its
    parameters and the ground truth (`evaluating.check_evaluate` traces it the same way).
    The step traced is the one the workers will run on the usual batch, and an in-process
    runner's worker reuses it: uint8 pixels (JPEG or PNG images at the model's size, as
    `pipeline.worker.decoding.decode_batch` gives them; float32 for raw tensors), with the
    preprocessing in the step; when the records name their units (`units_key`), the step
    explaining one given unit per record (a label); else the step explaining each record's
    top `top_k` units.

    Raises:
        ValueError: one line saying what is wrong.
    """
    if model is None:
        model = shared_model(settings.model)
    if not getattr(model, "inputs", None) or len(model.inputs) != 1:
        raise ValueError("The pipeline explains models with one image input (B, H, W, C).")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise ValueError(
            f"The model's input has shape {shape}; the pipeline needs (H, W, C) images."
        )
    logits = keras.tree.flatten(model.outputs)[0]
    if len(logits.shape) != 2 or logits.shape[-1] is None:
        raise ValueError(
            f"The model's first output has shape {tuple(logits.shape)}; the pipeline explains "
            "scores of shape (batch, units), one per class: a model whose first output is a "
            "map (segmentation) or has an unknown number of units needs a head that pools it "
            "to (batch, units) first."
        )
    num_units = int(logits.shape[-1])
    top_k = settings.top_k
    if not 1 <= top_k <= num_units:
        raise ValueError(
            f"--top_k {top_k} does not fit the model's {num_units} output units: ask for 1 to "
            f"{num_units}."
        )
    registered = methods.get(settings.method)
    params = explain_arguments(settings)
    input_dtype = "float32" if settings.image_format == "raw" else "uint8"
    explained = (exposed(model, settings.activation_layer, params["scores"])
                 if registered.exposed else model)
    image_size = settings.image_size
    size = shape[:2] if None not in shape[:2] or not image_size else tuple(image_size)
    if None not in size:
        explaining.check_explain(registered.function, explained, (*size, shape[2] or 3),
                                 top_k=None if settings.units_key else top_k,
                                 return_probabilities=True, input_dtype=input_dtype, **params)
        for name, metric_params in settings.metrics_with_params().items():
            evaluating.check_evaluate(name, model, (*size, shape[2] or 3), size,
                                      units=top_k, ground_truth=settings.ground_truth,
                                      scores=params["scores"], input_dtype=input_dtype,
                                      preprocessing=params["preprocessing"], **metric_params)
    return ModelInfo(shape, num_units)
