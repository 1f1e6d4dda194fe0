"""Whole small files (the manifest, the overview, the aggregates, the report) on any
filesystem, and the layout check of the JSON documents among them.

- `read_bytes`, `write_bytes`, `file_size`: local paths with Python's own `open` and `os`,
  every other Beam filesystem (`gs://`, ...) through Beam's `FileSystems`, imported only
  then, so that reading a local run (`python -m pipeline.report`) needs no Beam import.
- `check_layout`: a JSON value read back from a file checked against the layout its writer
  gives it, so that a damaged, hand-edited or foreign file fails with one line naming the
  file and the field, before any code reads the field.

Usage:

    write_bytes("gs://bucket/out/expl.report.html", page, "text/html")
    read_bytes("out/expl.manifest.json"), file_size("out/expl-00000-of-00001.tfrecord.gz")
    check_layout(json.loads(text), {"records": int, "names": [str]}, path, "an overview")
"""

import os
from typing import Any, Optional


def is_local(path: str) -> bool:
    """Whether `path` is on the local disk (no `scheme://`)."""
    return "://" not in path


def read_bytes(path: str) -> bytes:
    """The file at `path`. Raises FileNotFoundError when there is none, IsADirectoryError
    for a local folder."""
    if is_local(path):
        with open(path, "rb") as source:
            return source.read()
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    with FileSystems.open(path, compression_type="uncompressed") as source:
        return source.read()


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> str:
    """Write `data` at `path` (creating a local file's folders); returns `path`."""
    if is_local(path):
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "wb") as target:
            target.write(data)
        return path
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, mime_type=mime_type,
                            compression_type="uncompressed") as target:
        target.write(data)
    return path


def file_size(path: str) -> Optional[int]:
    """The size in bytes of the file at `path`, None when there is no such file."""
    if is_local(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    from apache_beam.io.filesystems import FileSystems

    matched = FileSystems.match([path])[0].metadata_list
    return matched[0].size_in_bytes if matched else None


class _Nullable(tuple):
    """In a layout: the value may be null or absent, else has the layout given."""


def nullable(layout) -> _Nullable:
    """A layout admitting null (or a missing key) besides `layout`."""
    return _Nullable((layout,))


RUN_AGAIN = "the job writes it when a run ends: run the job again to write it anew"
"""How to mend a run's manifest or overview that cannot be read, as its error says."""

_KINDS = {dict: "an object", list: "a list", str: "text", bool: "true or false",
          type(None): "null", int: "an integer", float: "a number"}


def _kind(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _fits(value, kind: type) -> bool:
    if kind is float:  # JSON numbers
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _layout_error(value, layout, where: str) -> Optional[str]:
    """Why `value` does not have `layout` (see `check_layout`), or None."""
    if isinstance(layout, _Nullable):
        return None if value is None else _layout_error(value, layout[0], where)
    if isinstance(layout, type):
        return (None if _fits(value, layout)
                else f"{where} is {_kind(value)}, not {_KINDS[layout]}")
    if isinstance(layout, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        for index, item in enumerate(value):
            problem = _layout_error(item, layout[0], f"{where}[{index}]")
            if problem:
                return problem
        return None
    if not isinstance(value, dict):
        return f"{where or 'the file'} is {_kind(value)}, not an object"
    entries = [(key, inner) for key, inner in layout.items() if key is not str]
    if str in layout:  # every other key
        entries += [(key, layout[str]) for key in value if key not in layout]
    for key, inner in entries:
        name = f"{where}.{key}" if where else str(key)
        if key not in value:
            if isinstance(inner, _Nullable):
                continue
            return f"{name} is missing"
        problem = _layout_error(value[key], inner, name)
        if problem:
            return problem
    return None


def check_layout(value: Any, layout, path: str, what: str, fix: str = "") -> Any:
    """`value` (JSON read from `path`), checked against `layout`; raises ValueError, one
    line naming `path`, the field and what it holds (and `fix`, how to mend it), when it
    does not fit.

    A layout is a type (`str`, `int`, `float` for any number, `bool`, `dict`, `list`,
    `object` for any value), a
    one-item list (`[int]`: a list of such values), a dict of required keys and their
    layouts (the key `str` stands for every key not named), or `nullable(layout)` (null or
    absent allowed).
    """
    problem = _layout_error(value, layout, "")
    if problem:
        raise ValueError(f"{path} is not {what} this pipeline can read: {problem}"
                         + (f"; {fix}." if fix else "."))
    return value


__all__ = ["RUN_AGAIN", "check_layout", "file_size", "is_local", "nullable", "read_bytes",
           "write_bytes"]
