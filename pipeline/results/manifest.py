"""The run manifest: `OUTPUT.manifest.json`, what produced the explanations next to it.

Every run of `python -m pipeline` writes one when the job has finished: the record schema
version, the method and its parameters (as given; every parameter the method received, its
defaults included; and `explain`'s post-processing and resizing), the metrics with their
parameters (as given, as received) and ground truth, and their count, mean and quantiles
per unit (`pipeline.results.aggregates`), the model's path and content hash, the input, the files
written (paths and sizes: explanations, dead letters, the Parquet table), the counts the
job's counters report (read, explained, dead-lettered per stage, duplicated ids with a few
examples), start and end time, library versions and the runner. A later reader can then tell which model and
settings made a set of maps, and whether the files hold everything the job explained
(`python -m pipeline.summary OUTPUT`).

Separation of concerns: `build_manifest` only describes (a dict of JSON values);
`write_manifest` / `read_manifest` move it (`pipeline.io.files`: Beam's filesystems for `gs://`
and the like, Python's `open` for local paths), and `read_manifest` checks what it reads
against `LAYOUT`, so that a damaged or foreign file fails with one line naming it;
`missing_files` compares the files a manifest lists with those in place;
`record_run` is what `pipeline.__main__` calls at the end of a run.

Usage:

    manifest = read_manifest("out/expl")           # or "out/expl.manifest.json"
    manifest["counts"]["explained"], manifest["model"]["sha256"]
"""

import datetime
import hashlib
import json
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from pipeline.io.files import (
    RUN_AGAIN,
    check_layout,
    file_size,
    nullable,
    read_bytes,
    write_bytes,
)
from pipeline.results.overview import overview_path

if TYPE_CHECKING:
    from pipeline.job.options import ExplainOptions

# Writing a manifest needs the job's modules (TensorFlow, Beam); reading one needs neither,
# so that `python -m pipeline.report` starts in a second: the writers import them inside.

MANIFEST_SUFFIX = ".manifest.json"
"""Appended to `--output`: out/expl -> out/expl.manifest.json (`out/expl-*` does not match
it, so the explanations' pattern stays clean)."""

MANIFEST_VERSION = 1
"""Version of the manifest's layout (the explanation records have their own,
`schema_version`)."""

_FILES = [{"path": str, "bytes": int}]
_SUMMARY = {"count": int, "missing": int, "mean": nullable(float), "quantiles": [float]}

LAYOUT = {
    "manifest_version": int,
    "schema_version": int,
    "method": {"name": str, "params": dict, "received": dict, "explain": dict},
    "metrics": nullable({
        "names": [str], "params": dict, "received": dict, "boxes_key": nullable(str),
        "mask_key": nullable(str),
        "aggregates": nullable({"quantile_levels": [float],
                                str: {"all": _SUMMARY, "per_unit": {str: _SUMMARY}}}),
    }),
    "model": {"path": str, "sha256": str, "bytes": int},
    "input": {"pattern": nullable(str), "tfds": nullable(str), "image_key": str,
              "id_key": nullable(str), "units_key": nullable(str), "image_shape": nullable([int])},
    "output": {"explanations": str, "dead_letters": str, "table": nullable(str),
               "overview": str, "map_encoding": str, "map_size": object,
               "files": {"explanations": _FILES, "dead_letters": _FILES,
                         "table": nullable(_FILES)}},
    "counts": {"counted": bool, "read": nullable(int), "explained": nullable(int),
               "dead_lettered": nullable(int), "dead_letters": nullable({str: int})},
    "duplicate_ids": nullable({"ids": int, "records": int, "examples": [str]}),
    "started": str, "finished": str, "seconds": float, "versions": {str: str}, "runner": str,
}
"""What `read_manifest` requires of a manifest (`pipeline.io.files.check_layout`): the fields
the summary and the report read, with their kinds."""

_LIBRARIES = ("explain-lib", "tensorflow", "keras", "apache-beam", "numpy", "pandas", "pillow",
              "pyarrow")


def manifest_path(output: str) -> str:
    """The manifest of the run writing `output` (the `--output` prefix); a path already
    ending in .manifest.json is returned as it is."""
    return output if output.endswith(MANIFEST_SUFFIX) else output + MANIFEST_SUFFIX


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def file_sha256(path: str) -> Dict[str, Any]:
    """`{"sha256": hex, "bytes": size}` of a file on any Beam filesystem."""
    from apache_beam.io.filesystems import FileSystems

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


def written_files(options: "ExplainOptions") -> Dict[str, Any]:
    """The shards under the run's prefixes, with their sizes: after a run, exactly the files
    it wrote (`pipeline.io.writing`)."""
    from pipeline.io.writing import list_shards
    from pipeline.results.table import TABLE_SUFFIX

    files = {"explanations": list_shards(options.output),
             "dead_letters": list_shards(options.dead_letters)}
    if options.table:
        files["table"] = list_shards(options.table, TABLE_SUFFIX)
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
    options: "ExplainOptions",
    summary,
    started: datetime.datetime,
    finished: datetime.datetime,
    runner: str,
    model_digest: Optional[Dict[str, Any]] = None,
    files: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest of a finished run, as JSON values.

    Args:
        options: the run's options.
        summary: its `pipeline.__main__.RunSummary` (the counters' view of the run).
        started, finished: when the command started and when the job finished.
        runner: the runner's name.
        model_digest: `file_sha256(options.model)`, computed here when not given.
        files: `written_files(options)`, listed here when not given.
    """
    from explain_lib import io as explain_io
    from explain_lib import metrics as explain_metrics
    from explain_lib.engine.explaining import STEP_PARAMS
    from pipeline.io.writing import FILE_SUFFIX
    from pipeline.job.options import parse_ints, stored_map_size, with_map_size
    from pipeline.results.table import TABLE_SUFFIX
    from pipeline.worker.explainer import (
        explain_params,
        received_params,
        resolve_method,
    )

    given = options.parsed_method_params()
    method = resolve_method(options.method)
    params = explain_params(method, with_map_size(given, options.map_size))
    metrics = options.parsed_metrics()
    return {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": explain_io.SCHEMA_VERSION,
        "method": {
            "name": options.method,
            "params": given,
            "received": _jsonable(received_params(method, params)),
            "explain": _jsonable({k: params[k] for k in STEP_PARAMS if k in params}),
        },
        "metrics": {
            "names": list(metrics),
            "params": json.loads(options.metric_params or "{}"),
            "received": {name: _jsonable({**explain_metrics.get(name).parameters, **params})
                         for name, params in metrics.items()},
            "boxes_key": options.boxes_key,
            "mask_key": options.mask_key,
            "aggregates": getattr(summary, "aggregates", None),
        } if metrics else None,
        "model": {"path": options.model, **(model_digest or file_sha256(options.model))},
        "input": {
            "pattern": options.input,
            "tfds": getattr(options, "tfds", None),
            "split": getattr(options, "split", None) if getattr(options, "tfds", None) else None,
            "image_key": options.image_key,
            "image_format": options.image_format,
            "image_shape": parse_ints(options.image_shape, 3, "image_shape"),
            "id_key": options.id_key,
            "units_key": options.units_key,
            "copy_features": list(options.parsed_copy_features()),
            "top_k": options.top_k,
            "image_size": parse_ints(options.image_size, 2, "image_size"),
            "preprocess": options.preprocess,
            "activation_layer": options.activation_layer,
            "precision": options.precision,
            "jit_compile": options.jit_compile,
        },
        "output": {
            "explanations": f"{options.output}-*{FILE_SUFFIX}",
            "dead_letters": f"{options.dead_letters}-*{FILE_SUFFIX}",
            "table": f"{options.table}-*{TABLE_SUFFIX}" if options.table else None,
            "overview": overview_path(options.output),
            "map_encoding": options.map_encoding,
            "map_size": _jsonable(stored_map_size(params.get("resizing"), method.upsampled)),
            "map_size_option": _jsonable(options.map_size or "auto"),
            "files": files if files is not None else written_files(options),
        },
        "counts": {
            "counted": summary.counted,
            "read": summary.read if summary.counted else None,
            "explained": summary.explained if summary.counted else None,
            "dead_lettered": summary.dead_lettered if summary.counted else None,
            "dead_letters": dict(summary.dead_letters) if summary.counted else None,
        },
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


def write_manifest(manifest: Dict[str, Any], path: str) -> str:
    """Write `manifest` as indented JSON at `path` (any Beam filesystem); returns the path."""
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    return write_bytes(path, data, "application/json")


def read_manifest(output: str) -> Dict[str, Any]:
    """The manifest of the run writing `output` (its `--output` prefix, or the manifest's
    own path). Raises FileNotFoundError when there is none, and ValueError, one line naming
    the file, for a manifest of another layout version, or one that is not JSON or lacks
    a field `LAYOUT` requires."""
    path = manifest_path(output)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"No run manifest at {path}.") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"No run manifest at {path}: it is a folder.") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a run manifest: it is not UTF-8 JSON "
                         f"({type(error).__name__}: {error}); {RUN_AGAIN}.") from None
    version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and version != MANIFEST_VERSION:
        raise ValueError(f"{path} has manifest version {version}; this pipeline reads version "
                         f"{MANIFEST_VERSION}: read it with the explain-lib that wrote it, or "
                         "run the job again.")
    check_layout(manifest, LAYOUT, path, "a run manifest", RUN_AGAIN)
    counts = manifest["counts"]
    unknown = [key for key in ("read", "explained", "dead_lettered", "dead_letters")
               if counts["counted"] and counts.get(key) is None]
    if unknown:
        raise ValueError(f"{path} is not a run manifest this pipeline can read: "
                         f"counts.{unknown[0]} is null, but counts.counted is true; "
                         f"{RUN_AGAIN}.")
    return manifest


def missing_files(manifest: Dict[str, Any]) -> List[str]:
    """The files `manifest` lists that are no longer as the run wrote them, one line each:
    missing, or of another size."""
    problems = []
    for kind, files in manifest["output"]["files"].items():
        for entry in files or []:
            size = file_size(entry["path"])
            if size is None:
                problems.append(f"{entry['path']} ({kind}) is missing.")
            elif size != entry["bytes"]:
                problems.append(f"{entry['path']} ({kind}) holds {size:,} bytes; the run wrote "
                                f"{entry['bytes']:,}.")
    return problems


def record_run(pipeline, options: "ExplainOptions", summary,
               started: datetime.datetime) -> str:
    """Write the manifest of a run that has just finished; returns its path."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"  # Beam's default
    if not isinstance(runner, str):  # a runner object rather than its name
        runner = type(runner).__name__
    manifest = build_manifest(options, summary, started, now(), runner)
    return write_manifest(manifest, manifest_path(options.output))


__all__ = [
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "build_manifest",
    "file_sha256",
    "library_versions",
    "LAYOUT",
    "manifest_path",
    "missing_files",
    "read_manifest",
    "record_run",
    "write_manifest",
    "written_files",
]
