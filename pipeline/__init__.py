"""pipeline: the Beam batch job that explains a whole dataset with `explain_lib`.

read TFRecords (file by file, in lists of records) -> [Reshuffle] -> RunInference(
RecordsHandler: parse, validate, decode, explain, encode) -> write TFRecords, plus a
dead-letter branch for records that fail any stage (and for the unreadable rest of damaged
files). Its layers, each importing only those below it (`tests/pipeline/test_layering.py`):

    commands   __main__ (the job), summary, report, render, demo
    job/       settings to a Beam pipeline: options, checks, transforms, launcher, recording
    worker/    one worker's stages: parsing, decoding, explaining, encoding; the handler
    results/   what the job keeps: table, aggregates, ids, overview, manifest
    io/        files on any filesystem: reading, framing, writing, dead letters, retries
    settings, counters, commands   declared once, used by all

Usage:

    python -m pipeline --input 'data/*.tfrecord*' --output out/expl --model model.keras \\
        --method gradcam

or, inside your own Beam pipeline:

    import pipeline
    read = p | beam.Create(["data/*.tfrecord"]) | pipeline.ReadTFRecords()
    result = read.records | pipeline.Explain(pipeline.Settings(model="model.keras"))
    result.explanations, result.dead_letters   # lists of serialized records
"""

import importlib

# The names below are imported on first use (PEP 562), not with the package: the job's
# modules load TensorFlow and Beam, which `python -m pipeline.report` and
# `pipeline.results.overview` do without.
_EXPORTS = {
    "Settings": "pipeline.settings",
    "JobOptions": "pipeline.job.options",
    "Explain": "pipeline.job.transforms",
    "Outputs": "pipeline.job.transforms",
    "build_pipeline": "pipeline.job.transforms",
    "inspect_model": "pipeline.job.checks",
    "ReadTFRecords": "pipeline.io.reading",
    "WriteShards": "pipeline.io.writing",
    "DeadLetter": "pipeline.io.dead_letters",
    "read_dead_letters": "pipeline.io.dead_letters",
    "RecordsHandler": "pipeline.worker.handler",
    "Worker": "pipeline.worker.explaining",
    "RecordMaps": "pipeline.worker.explaining",
    "load_keras_model": "pipeline.worker.models",
    "RecordSpec": "pipeline.worker.parsing",
    "CheckedRecord": "pipeline.worker.parsing",
    "ImageRecord": "pipeline.worker.decoding",
    "feature_kinds": "pipeline.worker.parsing",
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


__all__ = sorted(_EXPORTS)
