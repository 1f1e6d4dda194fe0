"""The job's command line: `ExplainOptions`, a `PipelineOptions` subclass, so every Beam
option (runner, workers, Dataflow settings, ...) works alongside ours.

Usage:

    options = PipelineOptions(["--input", "data/*.tfrecord", "--output", "out/expl",
                               "--model", "model.keras", "--method", "gradcam"])
    explain_options = options.view_as(ExplainOptions)
"""

import difflib
import importlib
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from explain_lib import methods
from explain_lib import metrics as explain_metrics
from explain_lib.engine.evaluating import check_metric_params
from explain_lib.io import DEFAULT_ENCODING
from explain_lib.utils import PRECISIONS
from pipeline.io.writing import FILE_SUFFIX
from pipeline.results.table import TABLE_COLUMNS, TABLE_SUFFIX
from pipeline.worker.handler import BATCHES_IN_FLIGHT
from pipeline.worker.records import IMAGE_FORMATS

DEAD_LETTER_SUFFIX = ".dead_letters"
"""Appended to `--output` for the default `--dead_letter_prefix`: `out/expl-*` matches the
results only, `out/expl.dead_letters-*` the dead letters."""

def parse_ints(text: Optional[str], count: int, name: str) -> Optional[Tuple[int, ...]]:
    """'224,224' -> (224, 224), checking there are `count` positive integers."""
    if text in (None, ""):
        return None
    try:
        values = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 1:
        raise ValueError(f"--{name} takes {count} positive integers separated by commas, "
                         f"not {text!r}.")
    return values


MAP_SIZES = ("auto", "input", "native")
"""`--map_size` names; H,W is the fourth form."""


def parse_map_size(value) -> Union[str, Tuple[int, int]]:
    """`--map_size`: "auto" (also when not given), "input", "native", or (H, W) from "H,W"
    or a pair."""
    if value in (None, ""):
        return "auto"
    if isinstance(value, str) and value in MAP_SIZES:
        return value
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    try:
        return parse_ints(text, 2, "map_size")
    except ValueError:
        raise ValueError(f"--map_size is auto, input, native or H,W (positive integers), "
                         f"not {value!r}.") from None


def with_map_size(method_params: Optional[Mapping[str, Any]], map_size) -> Dict[str, Any]:
    """`method_params` (JSON values) with the `resizing` that stores maps at `map_size`:
    "auto" and "native" -> false (the method's own resolution: a CAM's feature map, the
    input size for gradient and perturbation methods, which need no resizing), "input" ->
    true (the engine resizes maps to the model's input), (H, W) -> [H, W]. A `resizing`
    parameter given in `method_params` stands when `map_size` is not given; giving both is
    an error."""
    params = dict(method_params or {})
    if "resizing" in params:
        if map_size not in (None, ""):
            raise ValueError("Give the map size once: --map_size, or resizing in "
                             "--method_params.")
        return params
    size = parse_map_size(map_size)
    params["resizing"] = {"auto": False, "native": False, "input": True}.get(
        size, list(size) if isinstance(size, tuple) else None)
    return params


def check_arguments(argv: Sequence[str]) -> None:
    """Raise ValueError for an argument that is neither one of the job's options nor a Beam
    option, suggesting the closest option. Beam itself only logs and drops such an argument,
    so a misspelt `--methd scorecam` would run the default method.

    The options are those every `PipelineOptions` subclass declares (Beam's and
    `ExplainOptions`), parsed by Beam's own parser (no abbreviations). A runner given as a
    module path (`--runner apache_beam.runners.dask.dask_runner.DaskRunner`) is imported
    first (`import_runner`): an add-on runner declares its options in its module."""
    import_runner(_runner_argument(argv))
    parsers = []
    known = PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(argv))
    names = [f"--{name}" for name in known]
    problems = []
    for i, token in enumerate(unknown):
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            close = difflib.get_close_matches(flag, names, n=1)
            problems.append(f"unknown option {flag}"
                            + (f" (did you mean {close[0]}?)" if close else ""))
        elif i == 0 or not unknown[i - 1].startswith("-") or "=" in unknown[i - 1]:
            problems.append(f"unexpected argument {token!r}")  # not an unknown option's value
    if problems:
        raise ValueError("; ".join(problems) + " (python -m pipeline --help lists the options).")


def _runner_argument(argv: Sequence[str]) -> Optional[str]:
    """The value of `--runner` in `argv`, None without one."""
    for i, token in enumerate(argv):
        if token == "--runner" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--runner="):
            return token.split("=", 1)[1]
    return None


def import_runner(runner: Optional[str]) -> None:
    """Import the module of a runner that Beam does not know by name, given as a module path
    (`package.module.RunnerClass`), so that the options its module declares (its
    `PipelineOptions` subclasses) are known before the options are parsed; raises
    ValueError, one line, when the module cannot be imported. Beam's own runners declare
    theirs in Beam's core and are left alone."""
    if not runner or "." not in runner or runner in StandardOptions.ALL_KNOWN_RUNNERS:
        return
    module = runner.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - ImportError, or what importing it raised
        raise ValueError(f"--runner {runner}: cannot import {module} "
                         f"({type(error).__name__}: {error}).") from None


def per_batch_metrics() -> Tuple[str, ...]:
    """The metrics the job can compute: every registered metric that scores a batch of maps
    (`model_randomization`, which explains by itself, is a study of the method, not of a
    record's maps)."""
    return tuple(name for name, metric in explain_metrics.REGISTRY.items()
                 if not metric.takes_method)


def parse_names(text: Optional[str], option: str) -> Tuple[str, ...]:
    """'a,b' -> ('a', 'b'): names separated by commas, each once."""
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--{option} names {', '.join(repeated)} more than once.")
    return names


def parse_metrics(metrics: Optional[str], metric_params: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """`--metrics` and `--metric_params` as {metric name: its parameters}, in the order
    `--metrics` names them; checked against the metrics registry before any work.

    Raises ValueError, one line, for a metric the job cannot compute (an unknown name, with
    the closest known one), parameters of a metric `--metrics` does not name, and a
    parameter the metric does not take (`explain_lib.evaluate`'s own check).

    Usage:

        parse_metrics("deletion,pointing_game", '{"deletion": {"n_steps": 20}}')
        # {'deletion': {'n_steps': 20}, 'pointing_game': {}}
    """
    names = parse_names(metrics, "metrics")
    known = per_batch_metrics()
    for name in names:
        if name not in known:
            if name in explain_metrics.REGISTRY:
                raise ValueError(f"--metrics {name} is not computed per record: it studies the "
                                 "method on copies of the model (run explain_lib.evaluate "
                                 f"{name!r} in a notebook); the job computes {', '.join(known)}.")
            close = difflib.get_close_matches(name, known, n=1)
            raise ValueError(f"Unknown metric {name!r} in --metrics"
                             + (f" (did you mean {close[0]}?)" if close else "")
                             + f"; the job computes {', '.join(known)}.")
    try:
        params = json.loads(metric_params or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"--metric_params is not valid JSON: {error}") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ValueError("--metric_params is a JSON object of each metric's parameters, keyed "
                         'by metric name, e.g. \'{"deletion": {"n_steps": 20}}\'.')
    unused = sorted(set(params) - set(names))
    if unused:
        raise ValueError(f"--metric_params sets parameters of {', '.join(unused)}, which "
                         "--metrics does not compute: add it to --metrics or leave them out.")
    for name in names:
        try:
            check_metric_params(explain_metrics.get(name), params.get(name, {}))
        except ValueError as error:
            raise ValueError(f"--metric_params: {error}") from None
    return {name: dict(params.get(name, {})) for name in names}


def stored_map_size(resizing, upsampled: bool) -> Any:
    """The size maps are stored at, given `explain`'s `resizing` and whether the method's
    maps come at an inner layer's resolution (the registry's `upsampled`): "input",
    "native" (that inner resolution) or [H, W]."""
    if resizing is True or ((resizing is None or resizing is False) and not upsampled):
        return "input"
    if resizing is None or resizing is False:
        return "native"
    return [int(v) for v in resizing]


class ExplainOptions(PipelineOptions):
    """Options of the explaining job (see `python -m pipeline --help`)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("explain_pipeline")
        group.add_argument("--input", help="TFRecord file pattern of tf.train.Examples "
                           "(any Beam filesystem; .gz files are read as GZIP).")
        group.add_argument("--tfds", default=None,
                           help="Read a prepared TensorFlow Datasets split instead of --input: "
                           "NAME[/CONFIG][:VERSION] (image and label keys from its features).")
        group.add_argument("--tfds_data_dir", default="~/tensorflow_datasets",
                           help="TFDS data directory holding the prepared dataset.")
        group.add_argument("--split", default="train", help="TFDS split to explain.")
        group.add_argument("--output", help="Prefix of the explanation files "
                           f"(written as PREFIX-SSSSS-of-NNNNN{FILE_SUFFIX}).")
        group.add_argument("--dead_letter_prefix", default=None,
                           help="Prefix of the dead-letter files (default: "
                           f"OUTPUT{DEAD_LETTER_SUFFIX}).")
        group.add_argument("--model", help="Keras .keras model file (any Beam filesystem).")
        group.add_argument("--method", default="gradcam",
                           help="Explaining method, by name: "
                           f"{', '.join(methods.REGISTRY)} (default: gradcam).")
        group.add_argument("--method_params", default="{}",
                           help="The method's parameters as JSON, e.g. "
                           '\'{"n_steps": 64}\' for integrated_gradients (README: the table '
                           "of methods lists each one's), plus explain's "
                           '"postprocessing" (a filter name or null), "resizing" and '
                           '"scores" ("logits", the default: the scores before a final '
                           'softmax; "output"). Unknown names are refused before any work.')
        group.add_argument("--image_key", default="image", help="Feature holding the image.")
        group.add_argument("--image_format", default="auto", choices=IMAGE_FORMATS,
                           help="auto (JPEG/PNG detected, raw otherwise), jpeg, png or raw.")
        group.add_argument("--image_shape", default=None,
                           help="H,W,C of raw tensor images.")
        group.add_argument("--id_key", default="id", help="Feature holding the record id; "
                           "records without one get a hash of their bytes.")
        group.add_argument("--units_key", default=None,
                           help="int64 feature holding the units to explain (one or more).")
        group.add_argument("--top_k", type=int, default=1,
                           help="Explain the K top predicted units of records without units.")
        group.add_argument("--image_size", default=None,
                           help="H,W to resize images to (default: the model's input size).")
        group.add_argument("--preprocess", default="none",
                           help="none (pixels in [0, 255]), unit ([0, 1]), symmetric "
                           "([-1, 1]) or a keras.applications module (e.g. resnet_v2).")
        group.add_argument("--activation_layer", default=None,
                           help="Layer whose activations CAM methods weigh (default: the "
                           "input of the last global pooling layer).")
        group.add_argument("--batch_size", type=int, default=32,
                           help="Records per explaining step.")
        group.add_argument("--batches_in_flight", type=int, default=BATCHES_IN_FLIGHT,
                           help="Batches each worker thread keeps in flight on threads "
                           "sharing the model, so that one's decoding and encoding overlap "
                           "another's explaining (the model explains one at a time; 1: one "
                           "batch at a time).")
        group.add_argument("--map_encoding", default=DEFAULT_ENCODING,
                           help="How maps are stored: png8 (8 bits over each map's range), "
                           "png16, float16 (zlib) or raw32 (exact) "
                           f"(default: {DEFAULT_ENCODING}).")
        group.add_argument("--map_size", default=None,
                           help="Size maps are stored at: auto (the default: the method's own "
                           "resolution, e.g. 7x7 for Grad-CAM on ResNet50, the input size for "
                           "gradient and perturbation maps), input (the model's input size), "
                           "native (as auto) or H,W; readers resize on read. Without it, "
                           "resizing in --method_params applies if given.")
        group.add_argument("--precision", default="float32", choices=PRECISIONS,
                           help="Keras dtype policy the model computes under: float32, "
                           "mixed_bfloat16 or mixed_float16 (faster on GPUs; maps and logits "
                           "are float32 either way).")
        group.add_argument("--jit_compile", action="store_true",
                           help="Explain under XLA (compiles each step for the accelerator).")
        group.add_argument("--num_shards", type=int, default=0,
                           help="Output shards (0: let the runner decide).")
        group.add_argument("--strict_read", action="store_true",
                           help="Fail the job on a damaged input file (naming it and the byte "
                           "offset) instead of dead-lettering its unreadable rest.")
        group.add_argument("--metrics", default=None,
                           help="Faithfulness metrics computed per record with its maps, "
                           f"comma-separated: {', '.join(per_batch_metrics())} "
                           "(explain_lib.metrics; stored in each record and summarised in "
                           "the manifest).")
        group.add_argument("--metric_params", default="{}",
                           help="Each metric's parameters as JSON keyed by metric name, e.g. "
                           '\'{"deletion": {"n_steps": 20}}\'; unknown names are refused '
                           "before any work.")
        group.add_argument("--boxes_key", default=None,
                           help="Float-list feature holding each record's ground-truth boxes "
                           "for the localisation metrics, 4 values per box (ymin, xmin, ymax, "
                           "xmax in [0, 1], as TFDS stores them: objects/bbox).")
        group.add_argument("--mask_key", default=None,
                           help="Feature holding each record's ground-truth mask as PNG or "
                           "JPEG bytes (nonzero pixels are the object), instead of boxes.")
        group.add_argument("--table", default=None,
                           help="Prefix of a Parquet table, one row per explained unit "
                           f"(PREFIX-SSSSS-of-NNNNN{TABLE_SUFFIX}): ids, units, logits, "
                           "probabilities, map statistics, metrics, copied features.")
        group.add_argument("--copy_features", default=None,
                           help="Input features copied into the table, comma-separated (e.g. "
                           "label,filename): one int64, float or text value per record.")

    def check(self) -> None:
        """Fail early, with the option's name, on missing or malformed options."""
        if self.input and self.tfds:
            raise ValueError("Give --input or --tfds, not both.")
        missing = [name for name in ("output", "model") if not getattr(self, name)]
        if not (self.input or self.tfds):
            missing.insert(0, "input (or --tfds)")
        if missing:
            raise ValueError("Missing required option(s): "
                             + ", ".join(f"--{name}" for name in missing) + ".")
        self.parsed_method_params()
        parse_ints(self.image_shape, 3, "image_shape")
        parse_ints(self.image_size, 2, "image_size")
        if self.image_format == "raw" and not self.image_shape:
            raise ValueError("--image_format raw needs --image_shape H,W,C.")
        if self.top_k < 1:
            raise ValueError(f"--top_k must be at least 1, not {self.top_k}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, not {self.batch_size}.")
        if self.num_shards < 0:
            raise ValueError(f"--num_shards must be 0 (as the runner decides) or more, not "
                             f"{self.num_shards}.")
        if self.batches_in_flight < 1:
            raise ValueError("--batches_in_flight must be at least 1, not "
                             f"{self.batches_in_flight}.")
        with_map_size(self.parsed_method_params(), self.map_size)
        if self.dead_letters == self.output:
            raise ValueError("--dead_letter_prefix must differ from --output.")
        self.check_analysis()

    def check_analysis(self) -> None:
        """The options of metrics, ground truth and the table: every one must reach
        something, and nothing may be shadowed."""
        metrics = self.parsed_metrics()
        needing = [name for name in metrics if explain_metrics.get(name).ground_truth]
        keys = [f"--{name}" for name in ("boxes_key", "mask_key") if getattr(self, name)]
        if len(keys) == 2:
            raise ValueError("Give the ground truth as --boxes_key or as --mask_key, not both.")
        if needing and not keys:
            raise ValueError(f"--metrics {', '.join(needing)} needs ground truth: name the "
                             "feature holding each record's boxes (--boxes_key objects/bbox) "
                             "or mask (--mask_key).")
        if keys and not needing:
            users = [name for name in per_batch_metrics()
                     if explain_metrics.get(name).ground_truth]
            raise ValueError(f"{keys[0]} is used by the localisation metrics only: add "
                             f"{' or '.join(users)} to --metrics, or leave it out.")
        copied = self.parsed_copy_features()
        if copied and not self.table:
            raise ValueError("--copy_features copies input features into the table: give "
                             "--table PREFIX too, or leave it out.")
        if self.table:
            clashes = sorted(set(copied) & set(TABLE_COLUMNS + tuple(metrics)))
            if clashes:
                raise ValueError(f"--copy_features {', '.join(clashes)} would shadow the "
                                 "table's own column(s) of that name: the table already has "
                                 f"{', '.join(TABLE_COLUMNS + tuple(metrics))}.")
            if self.table in (self.output, self.dead_letters) or self.table.startswith(
                    self.output + "-"):
                raise ValueError(f"--table {self.table} would mix its files with the "
                                 f"explanations' ({self.output}-*): use another prefix, e.g. "
                                 f"{self.output}.table.")

    def parsed_metrics(self) -> Dict[str, Dict[str, Any]]:
        """`--metrics` with `--metric_params`: {metric name: parameters} (`parse_metrics`)."""
        return parse_metrics(self.metrics, self.metric_params)

    def parsed_copy_features(self) -> Tuple[str, ...]:
        """`--copy_features` as names."""
        return parse_names(self.copy_features, "copy_features")

    def parsed_method_params(self) -> dict:
        """`--method_params` as a dict."""
        try:
            params = json.loads(self.method_params or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"--method_params is not valid JSON: {error}") from None
        if not isinstance(params, dict):
            raise ValueError("--method_params must be a JSON object, e.g. '{\"resizing\": true}'.")
        return params

    @property
    def dead_letters(self) -> str:
        """The dead-letter prefix, defaulting to OUTPUT.dead_letters."""
        return self.dead_letter_prefix or self.output + DEAD_LETTER_SUFFIX
