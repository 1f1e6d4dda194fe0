"""The run manifest: `OUTPUT.manifest.json`, what produced the explanations next to it.

Every run of `python -m pipeline` writes one when the job has finished: the record schema
version, the method and its parameters (as given; every parameter the method received, its
defaults included; and `explain`'s post-processing and resizing), the metrics with their
parameters (as given, as received) and ground truth, and their count, mean and quantiles
per unit (`pipeline.results.aggregates`), the model's path and content hash, the input, the
files written (paths and sizes: explanations, dead letters, the Parquet table), the counts
the job's counters report (read, explained, dead-lettered per stage, duplicated ids with a
few examples), start and end time, library versions and the runner. A later reader can then
tell which model and settings made a set of maps, and whether the files hold everything the
job explained (`python -m pipeline.summary OUTPUT`).

Separation of concerns: `pipeline.job.recording` describes a finished run (a dict of JSON
values); `write_manifest` / `read_manifest` move it (`pipeline.io.files`: Beam's filesystems
for `gs://` and the like, Python's `open` for local paths), and `read_manifest` checks what
it reads against `LAYOUT`, so that a damaged or foreign file fails with one line naming it;
`missing_files` compares the files a manifest lists with those in place. Reading needs
neither TensorFlow nor Beam, so that `python -m pipeline.report` starts in a second.

Usage:

    manifest = read_manifest("out/expl")           # or "out/expl.manifest.json"
    manifest["counts"]["explained"], manifest["model"]["sha256"]
"""

import json
from typing import Any, Dict, List

from pipeline.io.files import (
    RUN_AGAIN,
    check_layout,
    file_size,
    nullable,
    read_bytes,
    write_bytes,
)

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
    "strategies": nullable({"clusters": object, "sample": int, "size": int,
                            "per_unit": nullable({str: dict})}),
    "duplicate_ids": nullable({"ids": int, "records": int, "examples": [str]}),
    "started": str, "finished": str, "seconds": float, "versions": {str: str}, "runner": str,
}
"""What `read_manifest` requires of a manifest (`pipeline.io.files.check_layout`): the fields
the summary and the report read, with their kinds."""


def manifest_path(output: str) -> str:
    """The manifest of the run writing `output` (the `--output` prefix); a path already
    ending in .manifest.json is returned as it is."""
    return output if output.endswith(MANIFEST_SUFFIX) else output + MANIFEST_SUFFIX


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


__all__ = [
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "LAYOUT",
    "manifest_path",
    "missing_files",
    "read_manifest",
    "write_manifest",
]
