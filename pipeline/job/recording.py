"""What a finished run writes about itself: its manifest (`pipeline.results.manifest`),
built from the run's settings, its counts and the files it wrote.

`build_manifest` describes a run as JSON values; `record_run` is what the launcher calls
when the job has finished (the model's hash, the written files' sizes, the library
versions, the runner).

Usage:

    path = record_run(pipeline, settings, summary, started)
"""

import datetime
import hashlib
import platform
from importlib import metadata
from typing import Any, Dict, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from explain_lib import io as explain_io
from explain_lib import methods
from explain_lib import metrics as explain_metrics
from explain_lib.engine.explaining import STEP_PARAMS
from pipeline.io.writing import FILE_SUFFIX, list_shards
from pipeline.results.manifest import MANIFEST_VERSION, manifest_path, write_manifest
from pipeline.results.overview import overview_path
from pipeline.results.table import TABLE_SUFFIX
from pipeline.settings import Settings, explain_params, received_params, stored_map_size

_LIBRARIES = ("explain-lib", "tensorflow", "keras", "apache-beam", "numpy", "pandas", "pillow",
              "pyarrow")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def file_sha256(path: str) -> Dict[str, Any]:
    """`{"sha256": hex, "bytes": size}` of a file on any Beam filesystem."""
    digest, size = hashlib.sha256(), 0
    with FileSystems.open(path, compression_type="uncompressed") as source:
        while True:
            block = source.read(16 << 20)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}


def library_versions() -> Dict[str, str]:
    """Versions of Python and of the libraries that shape the output."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def written_files(settings: Settings) -> Dict[str, Any]:
    """The shards under the run's prefixes, with their sizes: after a run, exactly the files
    it wrote (`pipeline.io.writing`)."""
    files = {"explanations": list_shards(settings.output),
             "dead_letters": list_shards(settings.dead_letters)}
    if settings.table:
        files["table"] = list_shards(settings.table, TABLE_SUFFIX)
    return files


def _jsonable(value):
    """Method parameters as JSON: functions (filters) by name, tuples as lists."""
    if callable(value):
        return getattr(value, "__name__", repr(value))
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def build_manifest(
    settings: Settings,
    summary,
    started: datetime.datetime,
    finished: datetime.datetime,
    runner: str,
    model_digest: Optional[Dict[str, Any]] = None,
    files: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest of a finished run, as JSON values.

    Args:
        settings: the run's settings.
        summary: its `pipeline.job.launcher.RunSummary` (the counters' view of the run).
        started, finished: when the command started and when the job finished.
        runner: the runner's name.
        model_digest: `file_sha256(settings.model)`, computed here when not given.
        files: `written_files(settings)`, listed here when not given.
    """
    given = dict(settings.method_params)
    method = methods.get(settings.method)
    params = explain_params(method, settings.explain_params())
    metrics = settings.metrics_with_params()
    return {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": explain_io.SCHEMA_VERSION,
        "method": {
            "name": settings.method,
            "params": given,
            "received": _jsonable(received_params(method, params)),
            "explain": _jsonable({k: params[k] for k in STEP_PARAMS if k in params}),
        },
        "metrics": {
            "names": list(metrics),
            "params": dict(settings.metric_params),
            "received": {name: _jsonable({**explain_metrics.get(name).parameters, **params})
                         for name, params in metrics.items()},
            "boxes_key": settings.boxes_key,
            "mask_key": settings.mask_key,
            "aggregates": getattr(summary, "aggregates", None),
        } if metrics else None,
        "model": {"path": settings.model, **(model_digest or file_sha256(settings.model))},
        "input": {
            "pattern": settings.input,
            "tfds": settings.tfds,
            "split": settings.split if settings.tfds else None,
            "image_key": settings.image_key,
            "image_format": settings.image_format,
            "image_shape": _jsonable(settings.image_shape),
            "id_key": settings.id_key,
            "units_key": settings.units_key,
            "copy_features": list(settings.copy_features),
            "top_k": settings.top_k,
            "image_size": _jsonable(settings.image_size),
            "preprocess": settings.preprocess,
            "activation_layer": settings.activation_layer,
            "precision": settings.precision,
            "jit_compile": settings.jit_compile,
        },
        "output": {
            "explanations": f"{settings.output}-*{FILE_SUFFIX}",
            "dead_letters": f"{settings.dead_letters}-*{FILE_SUFFIX}",
            "table": f"{settings.table}-*{TABLE_SUFFIX}" if settings.table else None,
            "overview": overview_path(settings.output),
            "map_encoding": settings.map_encoding,
            "map_size": _jsonable(stored_map_size(params.get("resizing"), method.upsampled)),
            "map_size_option": _jsonable(settings.map_size or "auto"),
            "files": files if files is not None else written_files(settings),
        },
        "counts": {
            "counted": summary.counted,
            "read": summary.read if summary.counted else None,
            "explained": summary.explained if summary.counted else None,
            "dead_lettered": summary.dead_lettered if summary.counted else None,
            "dead_letters": dict(summary.dead_letters) if summary.counted else None,
        },
        "strategies": {
            "clusters": settings.strategies_clusters or "eigengap",
            "sample": settings.strategies_sample,
            "size": settings.strategies_size,
            "per_unit": getattr(summary, "strategies", None),
        } if settings.strategies else None,
        "duplicate_ids": {
            "ids": summary.duplicates.ids,
            "records": summary.duplicates.records,
            "examples": list(summary.duplicates.examples),
        } if summary.counted else None,
        "started": _timestamp(started),
        "finished": _timestamp(finished),
        "seconds": round((finished - started).total_seconds(), 3),
        "versions": library_versions(),
        "runner": runner,
    }


def record_run(pipeline, settings: Settings, summary, started: datetime.datetime) -> str:
    """Write the manifest of a run that has just finished; returns its path."""
    runner = pipeline.options.view_as(StandardOptions).runner or "DirectRunner"  # Beam's
    if not isinstance(runner, str):  # a runner object rather than its name
        runner = type(runner).__name__
    manifest = build_manifest(settings, summary, started, now(), runner)
    return write_manifest(manifest, manifest_path(settings.output))
