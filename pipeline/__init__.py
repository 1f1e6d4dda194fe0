"""pipeline: the Beam batch job that explains a whole dataset with `explain_lib`.

read TFRecords (file by file, in lists of records) -> [Reshuffle] -> RunInference(
ExplainModelHandler: parse, validate, decode, explain, encode) -> write TFRecords, plus a
dead-letter branch for records that fail any stage (and for the unreadable rest of damaged
files).

Usage:

    python -m pipeline --input 'data/*.tfrecord*' --output out/expl --model model.keras \\
        --method gradcam

or, inside your own Beam pipeline:

    import pipeline
    read = p | beam.Create(["data/*.tfrecord"]) | pipeline.ReadTFRecords()
    result = read.records | pipeline.Explain("model.keras", "gradcam")
    result.explanations, result.dead_letters   # lists of serialized records
"""

import importlib

# The names below are imported on first use (PEP 562), not with the package: the job's
# modules load TensorFlow and Beam, which `python -m pipeline.report` and
# `pipeline.results.overview` do without.
_EXPORTS = {
    "Explainer": "pipeline.worker.explainer",
    "ExplainerConfig": "pipeline.worker.explainer",
    "Explanation": "pipeline.worker.explainer",
    "inspect_model": "pipeline.worker.explainer",
    "load_keras_model": "pipeline.worker.explainer",
    "ExplainModelHandler": "pipeline.worker.handler",
    "ExplainOptions": "pipeline.job.options",
    "ReadTFRecords": "pipeline.io.reading",
    "CheckedRecord": "pipeline.worker.records",
    "DeadLetter": "pipeline.io.dead_letters",
    "ImageRecord": "pipeline.worker.records",
    "RecordSpec": "pipeline.worker.records",
    "read_dead_letters": "pipeline.io.dead_letters",
    "Explain": "pipeline.job.transforms",
    "ExplainResult": "pipeline.job.transforms",
    "build_pipeline": "pipeline.job.transforms",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


__all__ = [
    "Explain",
    "ExplainResult",
    "ExplainModelHandler",
    "ExplainOptions",
    "Explainer",
    "ExplainerConfig",
    "Explanation",
    "CheckedRecord",
    "ImageRecord",
    "ReadTFRecords",
    "RecordSpec",
    "DeadLetter",
    "build_pipeline",
    "inspect_model",
    "load_keras_model",
    "read_dead_letters",
]
