"""TensorFlow Datasets input: read the prepared TFRecord shards of a TFDS dataset.

TFDS writes each split as TFRecord files of `tf.train.Example`s and describes them in
`dataset_info.json` and `features.json` beside them. `resolve` reads that description
(`tfds.builder_from_directory`: no builder code is needed, so a dataset prepared elsewhere,
or by a builder this process never imported, works) and returns the split's shard paths
and how the records are laid out: the image feature (its key, shape and encoding) and the
label feature (a `ClassLabel`, whose int64 values are the units to explain). The job then
reads the shards with Beam like any other TFRecords.

Usage:

    source = resolve("mnist:3.0.1", "~/tensorflow_datasets", "test")
    source.files, source.image_key, source.units_key
"""

import os
from typing import List, NamedTuple, Optional, Tuple


class TfdsSource(NamedTuple):
    """A TFDS split as the job reads it."""

    files: List[str]
    image_key: str
    image_shape: Tuple[Optional[int], ...]
    image_format: str
    units_key: Optional[str]
    num_units: Optional[int]


def parse_name(spec: str) -> Tuple[str, Optional[str], Optional[str]]:
    """'name[/config][:version]' -> (name, config, version)."""
    name, _, version = spec.partition(":")
    name, _, config = name.partition("/")
    if not name:
        raise ValueError(f"--tfds takes NAME[/CONFIG][:VERSION], not {spec!r}.")
    return name, config or None, version or None


def dataset_directory(spec: str, data_dir: str) -> str:
    """The prepared dataset's directory: DATA_DIR/NAME[/CONFIG]/VERSION, the newest version
    present when none is given."""
    import tensorflow_datasets as tfds

    name, config, version = parse_name(spec)
    base = os.path.join(os.path.expanduser(data_dir), name, *([config] if config else []))
    if version is None:
        versions = []
        for entry in (os.listdir(base) if os.path.isdir(base) else []):
            try:
                versions.append(tfds.core.Version(entry))
            except ValueError:
                continue  # incomplete.* and other non-version folders
        if not versions:
            raise ValueError(
                f"No prepared version of {spec!r} under {base}: prepare it first "
                "(tfds build, or builder.download_and_prepare()) or check --tfds_data_dir."
            )
        version = str(max(versions))
    path = os.path.join(base, version)
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        raise ValueError(f"{path} holds no prepared TFDS dataset (no dataset_info.json).")
    return path


def resolve(spec: str, data_dir: str, split: str) -> TfdsSource:
    """The shards and record layout of `split` of the TFDS dataset `spec`."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_directory(spec, data_dir))
    splits = builder.info.splits
    if split not in splits:
        raise ValueError(f"Dataset {spec!r} has no split {split!r}; it has: "
                         f"{', '.join(sorted(splits.keys()))}.")
    features = builder.info.features
    images = [key for key, feature in features.items()
              if isinstance(feature, tfds.features.Image)]
    labels = [key for key, feature in features.items()
              if isinstance(feature, tfds.features.ClassLabel)]
    if not images:
        raise ValueError(f"Dataset {spec!r} has no image feature: its features are "
                         f"{', '.join(features.keys())}.")
    image = features[images[0]]
    return TfdsSource(
        files=[os.fspath(path) for path in splits[split].filepaths],
        image_key=images[0],
        image_shape=tuple(image.shape),
        # TFDS stores images as PNG unless the feature says otherwise; "auto" detects both.
        image_format=image.encoding_format or "auto",
        units_key=labels[0] if labels else None,
        num_units=features[labels[0]].num_classes if labels else None,
    )
