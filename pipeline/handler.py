"""The RunInference model handler: Beam's side of explaining.

`ExplainModelHandler` is a `ModelHandler` like Beam's own: `load_model` loads the model once
per worker process (through `Explainer.load`: any Beam filesystem, the worker's
`MirroredStrategy`, the exposed model the method needs) and `run_inference` explains a batch
through `explain_lib`. It never raises for one bad record: when a batch fails, each record is
retried on its own, so good records of that batch are kept and only the failing ones come
back as failures (stage "explain"), each attributed to its own record. A batch that runs out
of accelerator memory is split in halves instead, and the worker keeps the size that fits
(`pipeline.adaptive_batches`).

Usage:

    handler = ExplainModelHandler("gs://bucket/model.keras", "gradcam", batch_size=32)
    results = records | RunInference(handler)   # PredictionResult(record, Explanation | StageError)
"""

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.adaptive_batches import explain_fitting, limit_for
from pipeline.explainer import Explainer, Explanation
from pipeline.records import ImageRecord, StageError

METRICS_NAMESPACE = "explain_pipeline"


class ExplainModelHandler(ModelHandler[ImageRecord, PredictionResult, Explainer]):
    """Explains `ImageRecord`s with a Keras model file and an `explain_lib` method.

    Args:
        model_path: a Keras `.keras` file on any Beam filesystem.
        method: a method name known to `explain_lib.methods` (for instance "gradcam").
        method_params: the method's parameters as JSON values (see
            `pipeline.explainer.resolve_method_params`).
        activation_layer: the layer CAM methods weigh (default: the input of the last global
            pooling layer).
        preprocess: "none", "unit", "symmetric" or a `keras.applications` module name.
        top_k: how many top predicted units to explain for records without units.
        batch_size: records per explaining step; RunInference batches exactly this many
            (fewer only at the end of a bundle), so the compiled step is traced once.
        devices: devices of the worker's `MirroredStrategy` (default: its GPUs, or the
            default strategy without GPUs).
        **kwargs: `ModelHandler` options, for instance `large_model=True` or
            `model_copies=1` (one model per machine, shared by its processes), `env_vars`.
    """

    def __init__(
        self,
        model_path: str,
        method: str = "gradcam",
        method_params: Optional[Mapping[str, Any]] = None,
        *,
        activation_layer: Optional[str] = None,
        preprocess: str = "none",
        top_k: int = 1,
        batch_size: int = 32,
        devices: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        kwargs.setdefault("min_batch_size", batch_size)
        kwargs.setdefault("max_batch_size", batch_size)
        super().__init__(**kwargs)
        self._model_path = model_path
        self._method = method
        self._method_params = dict(method_params or {})
        self._activation_layer = activation_layer
        self._preprocess = preprocess
        self._top_k = top_k
        self._devices = list(devices) if devices else None

    def load_model(self) -> Explainer:
        """Load the model under the worker's strategy and prepare the method."""
        return Explainer.load(
            self._model_path,
            self._method,
            self._method_params,
            activation_layer=self._activation_layer,
            preprocess=self._preprocess,
            top_k=self._top_k,
            devices=self._devices,
        )

    def run_inference(
        self,
        batch: Sequence[ImageRecord],
        model: Explainer,
        inference_args: Optional[Dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        """Explain the batch; each result's inference is an `Explanation` or a `StageError`.
        Out of memory, the batch is explained in smaller chunks (`adaptive_batches`)."""
        outcomes = explain_fitting(batch, lambda chunk: self._explain(chunk, model),
                                   limit_for(model),
                                   lambda chunk, error: self._one_by_one(chunk, error, model))
        return [PredictionResult(record, outcome) for record, outcome in zip(batch, outcomes)]

    def _one_by_one(self, batch: Sequence[ImageRecord], error: Exception,
                    model: Explainer) -> List[Any]:
        """A batch failed: explain its records one by one, so that only the failing ones
        become dead letters."""
        logging.warning("Explaining a batch of %d records failed (%s); retrying them one by "
                        "one.", len(batch), error)
        outcomes = []
        for record in batch:
            try:
                outcomes += self._explain([record], model)
            except Exception as single:  # noqa: BLE001: becomes this record's dead letter
                outcomes.append(StageError("explain", f"{type(single).__name__}: {single}",
                                           record.id))
        return outcomes

    @staticmethod
    def _explain(batch: Sequence[ImageRecord], model: Explainer) -> List[Any]:
        images = np.stack([record.image for record in batch])
        explanations = model.explain(images, [record.units for record in batch])
        return [_checked(explanation, record) for explanation, record in zip(explanations, batch)]

    def get_num_bytes(self, batch: Sequence[ImageRecord]) -> int:
        """Bytes of image data in the batch (what RunInference reports as its input size)."""
        return sum(record.image.nbytes for record in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def __repr__(self) -> str:
        return (f"ExplainModelHandler(model_path={self._model_path!r}, method={self._method!r}, "
                f"method_params={self._method_params!r})")


class _MemoryWarningFilter(logging.Filter):
    """Drops RunInference's "Resource module is not available" warning. Beam 2.77 imports
    `resource` together with its torch-based ModelManager, so without torch installed it
    believes every platform lacks `resource` and warns on every bundle; the only loss is
    RunInference's memory metric."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resource module is not available" not in record.getMessage()


def _quiet_memory_warning() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _MemoryWarningFilter) for f in root.filters):
        root.addFilter(_MemoryWarningFilter())


# At import, which is when a worker unpickles the handler: RunInference measures memory
# (and warns) before it first calls load_model.
_quiet_memory_warning()


def _checked(explanation: Explanation, record: ImageRecord):
    """The explanation, or a StageError when the method produced non-finite values (a map
    with NaNs is a failed explanation, not a result)."""
    for name in ("logits", "maps"):
        values = getattr(explanation, name)
        if not np.all(np.isfinite(values)):
            return StageError(
                "explain", f"the method returned non-finite {name} for units "
                f"{explanation.units.tolist()}", record.id,
            )
    return explanation
