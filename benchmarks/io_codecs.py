"""The hand-written writers of `explain_lib.io` against the library way, per record.

`explain_lib.io` writes two formats by hand: the grayscale PNG files of the png8 and png16
map encodings (`explain_lib.io.png`) and the `tf.train.Example` of each record
(`explain_lib.io.wire`). Each is kept only while it beats the library way; this measures it,
all candidates in one process, in turn, so that the ratios compare like with like.

Sections (`--sections`, both by default):

- `png`: one map's PNG file from its levels (H, W) uint8 (png8) or uint16 (png16), for a
  224x224 Grad-CAM-like map (a 7x7 map resized bilinearly: smooth), a 224x224 gradient-like
  map (|noise|: what gradients of a model with random weights look like) and a native 7x7
  map (`--map_size native`, the job's default for CAMs), `--batch` different maps of each.
  Candidates: the hand-written writer one map at a time and the batch at once (as the job
  encodes them), a straightforward zlib + struct encoder (one filter on every row, None
  or Up, zlib level 6), `tf.io.encode_png` and Pillow (`PIL.Image.save`, already a
  dependency: the numpy decoder reads PNGs with it). Every file is checked:
  `tf.io.decode_png` reads back the same levels.
- `record`: one explanation record's serialization from values at hand (the maps already
  encoded): id, units, logits, probabilities, png8 maps, their shape, encoding and range,
  input_size, and two metrics (13 features), for K = 1 unit (a 224x224 map, 5-7 KB) and
  K = 5 units (five native 7x7 maps), `--batch` different records of each. Candidates: the
  hand-written writer one record at a time (`serialize_example`) and the batch at once
  (`schema.serialize_records`, what the job runs), and
  `tf.train.Example(...).SerializeToString(deterministic=True)` (building the message
  included). Every record is checked: it parses to the same Example, and the hand-written
  writer given the features in key order writes the deterministic bytes exactly.

Reported per candidate: the median time per map or record over `--repeats` timings (each
of enough calls to last about 20 ms), its ratio to the hand-written writer's one at a time
in the same run, and the mean bytes written (with, for PNG, whether they are the
hand-written files' bytes; for records, whether they are the deterministic serialization's).

Run: .venv/bin/python -m benchmarks.io_codecs [--sections png record] [--repeats 15]
"""

import argparse
import io
import statistics
import struct
import time
import zlib
from typing import Callable, List

import numpy as np
import tensorflow as tf

from benchmarks.common import machine
from explain_lib.io import schema
from explain_lib.io.codecs import encode_batch
from explain_lib.io.png import grayscale_pngs
from explain_lib.io.wire import serialize_example

SIZE = 224


def per_call(fn: Callable[[], object], repeats: int, calls_per: int = 1) -> float:
    """Median seconds per map or record of `fn`, which makes `calls_per` of them, over
    `repeats` timings, each of enough calls to last about 20 ms, after one warm-up call."""
    start = time.perf_counter()
    fn()
    calls = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls / calls_per)
    return statistics.median(times)


# --- png ---------------------------------------------------------------------------------------


def map_of(kind: str, seed: int) -> np.ndarray:
    """A float32 map (H, W): "cam" smooth 224x224, "gradients" noisy 224x224, "native" 7x7."""
    rng = np.random.default_rng(seed)
    if kind == "cam":
        small = rng.uniform(0, 1, (7, 7, 1)).astype(np.float32)
        return tf.image.resize(small, (SIZE, SIZE)).numpy()[..., 0]
    if kind == "gradients":
        return np.abs(rng.normal(0, 1, (SIZE, SIZE))).astype(np.float32)
    return rng.uniform(0, 1, (7, 7)).astype(np.float32)


def levels_of(maps: np.ndarray, bits: int) -> np.ndarray:
    """Maps (..., H, W) quantised over each map's range to 2**bits levels, as the codec does."""
    top = 2**bits - 1
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    levels = np.rint((maps - low) / np.where(span > 0, span, 1) * top)
    return levels.astype(np.uint8 if bits == 8 else np.uint16)


def plain_png(levels: np.ndarray, up: bool = False) -> bytes:
    """A straightforward grayscale PNG: every row with filter None (or Up: minus the row
    above, byte by byte), zlib level 6."""
    height, width = levels.shape
    data = levels.astype(f">u{levels.dtype.itemsize}").view(np.uint8).reshape(height, -1)
    rows = np.zeros((height, 1 + data.shape[1]), np.uint8)
    rows[:, 1:] = data
    if up:
        rows[:, 0] = 2
        np.subtract(data[1:], data[:-1], out=rows[1:, 1:])  # modulo 256

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, 8 * levels.dtype.itemsize, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def pillow_png(levels: np.ndarray) -> bytes:
    from PIL import Image

    sink = io.BytesIO()
    Image.fromarray(levels).save(sink, "PNG")
    return sink.getvalue()


def png_section(args):
    print(f"\n### One map's PNG file (median of {args.repeats} timings; batch {args.batch})\n")
    print("| map | bits | candidate | ms/map | x hand-written (one map) | bytes | "
          "same bytes as hand-written |")
    print("|---|---|---|---|---|---|---|")
    for kind, described in (("cam", "224x224 Grad-CAM-like"),
                            ("gradients", "224x224 gradient-like"),
                            ("native", "7x7 native")):
        maps = np.stack([map_of(kind, seed) for seed in range(args.batch)])
        for bits in (8, 16):
            batch = levels_of(maps, bits)
            tf_dtype = tf.uint8 if bits == 8 else tf.uint16
            one_at_a_time = {
                "hand-written, one map at a time": lambda levels: grayscale_pngs(levels[None])[0],
                "zlib + struct, filter None": plain_png,
                "zlib + struct, filter Up": lambda levels: plain_png(levels, up=True),
                "tf.io.encode_png": lambda levels: tf.io.encode_png(
                    tf.constant(levels[..., None])).numpy(),
                "Pillow": pillow_png,
            }
            candidates = {name: (lambda encode=encode: [encode(levels) for levels in batch])
                          for name, encode in one_at_a_time.items()}
            candidates[f"hand-written, batch of {args.batch} at once"] = (
                lambda: grayscale_pngs(batch))
            reference = candidates["hand-written, one map at a time"]()
            base = None
            for name, fn in candidates.items():
                files = fn()
                for data, levels in zip(files, batch):
                    decoded = tf.io.decode_png(data, channels=1, dtype=tf_dtype).numpy()
                    assert np.array_equal(decoded[..., 0], levels), (kind, bits, name)
                seconds = per_call(fn, args.repeats, len(batch))
                base = base or seconds
                size = sum(map(len, files)) / len(files)
                print(f"| {described} | {bits} | {name} | {1e3 * seconds:.3f} | "
                      f"{seconds / base:.2f} | {size:,.0f} | "
                      f"{'yes' if files == reference else 'no'} |", flush=True)


# --- record ------------------------------------------------------------------------------------


def record_batch(count: int, units: int, native: bool) -> dict:
    """The values of `count` records of `units` units each, maps encoded as png8: 224x224
    Grad-CAM-like maps, or native 7x7 ones explaining 224x224 images."""
    rng = np.random.default_rng(units)
    kind = "native" if native else "cam"
    maps = np.stack([np.stack([map_of(kind, 100 * i + k) for k in range(units)], axis=-1)
                     for i in range(count)])
    return {
        "ids": [f"img-{i:06d}" for i in range(count)],
        "units": rng.integers(0, 1000, (count, units)).astype(np.int64),
        "logits": rng.normal(0, 3, (count, units)).astype(np.float32),
        "encoded": encode_batch(maps, "png8"),
        "input_size": (SIZE, SIZE),
        "per_unit": {"probabilities": rng.uniform(0, 1, (count, units)).astype(np.float32),
                     "metrics/deletion": rng.uniform(0, 1, (count, units)).astype(np.float32),
                     "metrics/insertion": rng.uniform(0, 1, (count, units)).astype(np.float32)},
    }


def features_of(values: dict, i: int) -> list:
    """Record `i`'s features as (key, kind, values), in the order the job writes them."""
    stored = values["encoded"][i]
    return [
        ("schema_version", "int64", [schema.SCHEMA_VERSION]),
        ("id", "bytes", [values["ids"][i].encode()]),
        ("units", "int64", values["units"][i]),
        ("logits", "float", values["logits"][i]),
        ("maps", "bytes", [stored.data]),
        ("map_shape", "int64", stored.shape),
        ("map_encoding", "bytes", [stored.encoding.encode()]),
        ("map_min", "float", stored.map_min),
        ("map_max", "float", stored.map_max),
        ("input_size", "int64", values["input_size"]),
        *[(name, "float", per_unit[i]) for name, per_unit in values["per_unit"].items()],
    ]


def library_record(features: list) -> bytes:
    """The same record built as a `tf.train.Example` and serialized deterministically."""
    lists = {"bytes": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)),
             "float": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v)),
             "int64": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))}
    feature = {key: lists[kind](values.tolist() if isinstance(values, np.ndarray)
                                else list(values))
               for key, kind, values in features}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def record_section(args):
    print(f"\n### One record's serialization, maps already encoded (median of {args.repeats} "
          f"timings; batch {args.batch})\n")
    print("| record | candidate | µs/record | x hand-written (one record) | bytes | "
          "same bytes as deterministic protobuf |")
    print("|---|---|---|---|---|---|")
    for units, native, described in ((1, False, "K=1, one 224x224 png8 map"),
                                     (5, True, "K=5, five 7x7 png8 maps")):
        values = record_batch(args.batch, units, native)
        records = [features_of(values, i) for i in range(args.batch)]
        batch_args = (values["ids"], values["units"], values["logits"], values["encoded"],
                      values["input_size"], values["per_unit"])
        candidates = {
            "hand-written, one record at a time": lambda: [
                serialize_example(features) for features in records],
            f"hand-written, batch of {args.batch} at once (the job's)": lambda: (
                schema.serialize_records(*batch_args)),
            "tf.train.Example, deterministic": lambda: [
                library_record(features) for features in records],
        }
        deterministic = candidates["tf.train.Example, deterministic"]()
        for features, data in zip(records, deterministic):  # the same entries, sorted by key
            assert serialize_example(sorted(features, key=lambda f: f[0])) == data
        expected = [tf.train.Example.FromString(data) for data in deterministic]
        base = None
        for name, fn in candidates.items():
            made = fn()
            assert [tf.train.Example.FromString(data) for data in made] == expected, name
            seconds = per_call(fn, args.repeats, len(records))
            base = base or seconds
            same = "yes" if made == deterministic else "no (entries in another order)"
            print(f"| {described} | {name} | {1e6 * seconds:.1f} | {seconds / base:.2f} | "
                  f"{sum(map(len, made)) / len(made):,.0f} | {same} |", flush=True)


SECTIONS = {"png": png_section, "record": record_section}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    print(f"Machine: {machine()}")
    for section in args.sections:
        SECTIONS[section](args)


if __name__ == "__main__":
    main()
