"""pipeline: the Beam batch job that explains a whole dataset with `explain_lib`.

read TFRecords (file by file) -> parse and validate -> Reshuffle -> RunInference(
ExplainModelHandler) -> encode -> write TFRecords, plus a dead-letter branch for records that
fail any stage (and for the unreadable rest of damaged files).

Usage:

    python -m pipeline --input 'data/*.tfrecord*' --output out/expl --model model.keras \\
        --method gradcam

or, inside your own Beam pipeline:

    import pipeline
    result = records | pipeline.Explain("model.keras", "gradcam")
    result.explanations, result.dead_letters
"""

from pipeline.explainer import (
    Explainer,
    ExplainerConfig,
    Explanation,
    inspect_model,
    load_keras_model,
)
from pipeline.handler import ExplainModelHandler
from pipeline.options import ExplainOptions
from pipeline.reading import ReadTFRecords
from pipeline.records import (
    CheckedRecord,
    DeadLetter,
    ImageRecord,
    RecordSpec,
    read_dead_letters,
)
from pipeline.transforms import Explain, ExplainResult, build_pipeline

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
