"""The job's settings, declared once: `Settings`, a frozen dataclass whose fields are the
job's command-line options (and a few that only code sets).

Everything else is derived from its fields: the command line (`add_arguments`, and
`from_arguments` parsing each option's text into the field's value), `pipeline.Explain`
(which takes a `Settings`), the manifest (which records them) and the reference table of
options in `docs/options.md` (`options_table`, checked against that page by a test).

A `Settings` checks its own values when it is made (`__post_init__`): an unknown method,
metric or encoding, a parameter the method or a metric does not take, a malformed size, a
count below its least value. What only the job needs (an output prefix, a model file, that
its prefixes do not collide) is checked by the job (`pipeline.job.options.check_job`).
Errors are one line naming the option: `--top_k must be at least 1, not 0.`

Usage:

    settings = Settings(model="model.keras", method="gradcam", units_key="label")
    settings = from_arguments(["--model", "model.keras", "--metrics", "deletion"])
    dataclasses.replace(settings, batch_size=64)
"""

import dataclasses
import difflib
import json
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from explain_lib import filters, methods
from explain_lib import metrics as explain_metrics
from explain_lib.engine.evaluating import check_metric_params
from explain_lib.engine.explaining import split_params
from explain_lib.io import DEFAULT_ENCODING, get_encoding
from explain_lib.utils import PRECISIONS

IMAGE_FORMATS = ("auto", "jpeg", "png", "raw")
"""`--image_format` names."""

MAP_SIZES = ("auto", "input", "native")
"""`--map_size` names; H,W is the fourth form."""

DEAD_LETTER_SUFFIX = ".dead_letters"
"""Appended to `--output` for the default `--dead_letter_prefix`: `out/expl-*` matches the
results only, `out/expl.dead_letters-*` the dead letters."""

MapSize = Union[None, str, Tuple[int, int]]


# --- what an option's text means -----------------------------------------------------------


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


def parse_names(text: Optional[str], option: str) -> Tuple[str, ...]:
    """'a,b' -> ('a', 'b'): names separated by commas, each once."""
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--{option} names {', '.join(repeated)} more than once.")
    return names


def parse_json_object(text: Optional[str], option: str) -> Dict[str, Any]:
    """A JSON object's text as a dict (empty when not given)."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"--{option} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{option} must be a JSON object, e.g. '{{\"resizing\": true}}'.")
    return value


def _metric_params_text(text: Optional[str]) -> Dict[str, Dict[str, Any]]:
    params = parse_json_object(text, "metric_params")
    if not all(isinstance(v, dict) for v in params.values()):
        raise ValueError("--metric_params is a JSON object of each metric's parameters, keyed "
                         'by metric name, e.g. \'{"deletion": {"n_steps": 20}}\'.')
    return params


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


def stored_map_size(resizing, upsampled: bool) -> Any:
    """The size maps are stored at, given `explain`'s `resizing` and whether the method's
    maps come at an inner layer's resolution (the registry's `upsampled`): "input",
    "native" (that inner resolution) or [H, W]."""
    if resizing is True or ((resizing is None or resizing is False) and not upsampled):
        return "input"
    if resizing is None or resizing is False:
        return "native"
    return [int(v) for v in resizing]


def per_batch_metrics() -> Tuple[str, ...]:
    """The metrics the job can compute: every registered metric that scores a batch of maps
    (`model_randomization`, which explains by itself, is a study of the method, not of a
    record's maps)."""
    return tuple(name for name, metric in explain_metrics.REGISTRY.items()
                 if not metric.takes_method)


def check_metrics(names: Sequence[str], params: Mapping[str, Mapping[str, Any]]) -> None:
    """`--metrics` and `--metric_params` against the metrics registry: ValueError, one line,
    for a metric the job cannot compute (an unknown name, with the closest known one),
    parameters of a metric `--metrics` does not name, and a parameter a metric does not take
    or a value it refuses (`explain_lib.evaluate`'s own check)."""
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
    unused = sorted(set(params) - set(names))
    if unused:
        raise ValueError(f"--metric_params sets parameters of {', '.join(unused)}, which "
                         "--metrics does not compute: add it to --metrics or leave them out.")
    for name in names:
        try:
            check_metric_params(explain_metrics.get(name), params.get(name, {}))
        except ValueError as error:
            raise ValueError(f"--metric_params: {error}") from None


def resolve_method_params(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Method parameters as JSON gives them, turned into what `explain` takes:
    `postprocessing` names a filter in `explain_lib.filters` (or is null), `resizing` is
    true, false or [H, W], `spatial_axis` a list of axes; the rest passes through (the
    methods take their own parameters by name: `"gradient_filter": "square"`).

    Usage:

        resolve_method_params({"postprocessing": "positive_normalize", "resizing": [7, 7]})
    """
    if isinstance(params, str):
        params = json.loads(params) if params.strip() else {}
    params = dict(params or {})
    if "preprocessing" in params:
        raise ValueError("--method_params cannot set preprocessing: the job's --preprocess "
                         "names it.")
    if isinstance(params.get("postprocessing"), str):
        params["postprocessing"] = filters.get(params["postprocessing"])
    if isinstance(params.get("resizing"), list):
        params["resizing"] = tuple(int(v) for v in params["resizing"])
    if isinstance(params.get("spatial_axis"), list):
        params["spatial_axis"] = tuple(int(v) for v in params["spatial_axis"])
    return params


def explain_params(method: methods.Method, given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """What the job passes to `explain` for `method`: its conventional post-processing and
    resizing (`Method.explain_defaults`), overridden by the `given` JSON parameters.

    Raises ValueError for a parameter the method does not take (the names are checked here,
    without a model; the launcher traces the method to check the values).
    """
    params = {**method.explain_defaults, **resolve_method_params(given)}
    split_params(method.function, params)
    return params


def received_params(method: methods.Method, params: Mapping[str, Any]) -> Dict[str, Any]:
    """Every parameter `method` receives from `explain` with `params`: its defaults, with
    the given values in their place (what the manifest records)."""
    method_params, _, _ = split_params(method.function, dict(params))
    return {**method.parameters, **method_params}


# --- the declaration -------------------------------------------------------------------------


def option(default: Any, help: str, *, text: Optional[str] = None, shown: Optional[str] = None,
           parse: Optional[Callable[[Any], Any]] = None, choices: Sequence[str] = (),
           command_line: bool = True) -> Any:
    """A `Settings` field: its default value and what it does (`help`: the command line's
    help and the reference table's description). `text` is the default as the command line
    gives it (when it differs from the value), `shown` the default as the reference table
    shows it, `parse` turns the option's text into the value, `choices` are the values the
    command line accepts; a field with `command_line=False` is set from code only."""
    metadata = dict(help=help, text=text, shown=shown, parse=parse, choices=tuple(choices),
                    command_line=command_line)
    if isinstance(default, dict):  # (a fresh one per Settings)
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the job does, as one value (see the module docstring): `pipeline.Explain`
    reads the fields from `model` to `copy_features`, the job the rest too."""

    input: Optional[str] = option(
        None, "TFRecord file pattern of `tf.train.Example`s, on any Beam filesystem (`gs://` "
        "too). `.gz` files are read as GZIP (`.bz2`, `.xz`, `.deflate`, `.zst` too).",
        shown="required")
    tfds: Optional[str] = option(
        None, "read a prepared TensorFlow Datasets split instead of `--input`: "
        "`NAME[/CONFIG][:VERSION]` (image and label keys from its features)")
    tfds_data_dir: str = option(
        "~/tensorflow_datasets", "TFDS data directory holding the prepared dataset")
    split: str = option("train", "TFDS split to explain")
    output: Optional[str] = option(
        None, "prefix of the results: `OUTPUT-SSSSS-of-NNNNN.tfrecord.gz`", shown="required")
    dead_letter_prefix: Optional[str] = option(
        None, "prefix of the dead letters (`OUTPUT-*` matches only the results)",
        shown="`OUTPUT.dead_letters`")
    model: Optional[str] = option(
        None, "Keras 3 `.keras` file, on any Beam filesystem", shown="required")
    method: str = option(
        "gradcam", "the explaining method: any name in the registry "
        f"(`explain_lib.methods.REGISTRY`): {', '.join(methods.REGISTRY)}")
    method_params: Mapping[str, Any] = option(
        {}, "JSON: the method's parameters (the table of methods lists them: "
        '`{"n_steps": 64}`, `{"repetitions": 50, "noise_seed": 3}`, `{"score": "logit"}`), '
        "plus `explain`'s `\"postprocessing\"` (a filter name, or `null` for raw maps), "
        '`"resizing"` (`true`, `false` or `[H, W]`) and `"scores"` (`"logits"`, the default: '
        'a softmax head\'s scores before it; `"output"`). The method\'s conventional '
        "post-processing and resizing (`explain_defaults`) apply unless overridden. A name "
        "the method does not take, and a value it refuses, stop the job before any work "
        "(exit 2, one line).",
        text="{}", shown="`{}`", parse=lambda text: parse_json_object(text, "method_params"))
    image_key: str = option("image", "feature holding the image")
    image_format: str = option(
        "auto", "`auto` (JPEG or PNG bytes, detected by their signature; a raw tensor "
        "otherwise), `jpeg`, `png`, `raw`", choices=IMAGE_FORMATS)
    image_shape: Optional[Tuple[int, int, int]] = option(
        None, "`H,W,C` of raw tensors: a float or int64 feature of H·W·C values, or bytes of "
        "H·W·C uint8 or H·W·C little-endian float32 values",
        parse=lambda text: parse_ints(text, 3, "image_shape"))
    id_key: Optional[str] = option(
        "id", "feature holding the record id (bytes or int64). A record without one, or "
        "with an empty one, gets the first 128 bits of the SHA-256 of its bytes, in hex: the "
        "same record gets the same id on every run. Ids held by several records are "
        "explained and reported.", parse=lambda text: text or None)
    units_key: Optional[str] = option(
        None, "int64 feature holding the units to explain (one or more per record)",
        parse=lambda text: text or None)
    top_k: int = option(
        1, "records without units get their K top predicted units explained "
        "(`explain_predicted`: chosen from the method's own forward pass, no extra pass)")
    image_size: Optional[Tuple[int, int]] = option(
        None, "`H,W`; required only for models that take any size", shown="the model's",
        parse=lambda text: parse_ints(text, 2, "image_size"))
    preprocess: str = option(
        "none", "the model gets float32 pixels in [0, 255] (`none`: right for models that "
        "carry their own preprocessing layers), [0, 1] (`unit`), [-1, 1] (`symmetric`), or "
        "a `keras.applications` module's `preprocess_input` (`resnet_v2`, `efficientnet`, "
        "...), applied inside the engine's compiled step (`explain`'s `preprocessing`): "
        "pixels travel to the devices as decoded, uint8 for images at the model's size")
    activation_layer: Optional[str] = option(
        None, "the layer CAM methods weigh", shown="input of the last global pooling")
    batch_size: int = option(32, "records per explaining step")
    batches_in_flight: int = option(
        2, "batches each worker thread keeps in flight, on threads sharing the one model: "
        "while one batch is explained (on the GPU, or TensorFlow's threads), another is "
        "decoded and encoded, within one bundle and on any runner. The model explains one "
        "batch at a time, so the devices' memory holds one batch's work and `--batch_size` "
        "stays the knob that sizes it. RunInference hands the handler whole batches of at "
        "least 512 records at a time (more with `batch_size × batches_in_flight` over "
        "512). `1`: one batch at a time (the least host memory)")
    map_encoding: str = option(
        DEFAULT_ENCODING, "how maps are stored: `png8`, `png16`, `float16` or `raw32` (see "
        "the outputs' schema)")
    map_size: MapSize = option(
        None, "size maps are stored at: `auto` (the method's own resolution: a CAM's feature "
        "map, 7x7 for Grad-CAM on ResNet50; the input's size for gradient and perturbation "
        "maps, which have it already), `input` (the model's input size), `native` (as "
        "`auto`) or `H,W`; readers resize on read. It sets the engine's `resizing`: without "
        "`--map_size`, `resizing` in `--method_params` applies if given; giving both is an "
        "error.", shown="`auto`", parse=lambda text: text or None)
    precision: str = option(
        "float32", "the Keras dtype policy the model computes under: `float32`, "
        "`mixed_bfloat16` or `mixed_float16` (`explain_lib.utils.with_dtype_policy`: a copy "
        "of the model, weights float32, computing in half precision, which GPUs run "
        "fastest); maps and logits are float32 either way", choices=PRECISIONS)
    jit_compile: bool = option(
        False, "explain under XLA: the engine compiles its step with XLA, as Keras does for "
        "a model compiled with `jit_compile=True`")
    num_shards: int = option(0, "result shards (0: the runner decides)")
    strict_read: bool = option(
        False, "fail the job on a damaged input file (one line naming it and the byte "
        "offset) instead of dead-lettering its unreadable rest")
    metrics: Tuple[str, ...] = option(
        (), "faithfulness metrics computed on the worker with each batch's maps and stored "
        f"in each record, comma-separated: {', '.join(per_batch_metrics())}",
        parse=lambda text: parse_names(text, "metrics"))
    metric_params: Mapping[str, Mapping[str, Any]] = option(
        {}, "JSON: each metric's parameters keyed by metric name, "
        '`{"deletion": {"n_steps": 50}, "pointing_game": {"tolerance": 0}}` (the metrics '
        "registry lists them); a name a metric does not take, and a value it refuses, stop "
        "the job before any work", text="{}", shown="`{}`", parse=_metric_params_text)
    boxes_key: Optional[str] = option(
        None, "float-list feature holding each record's ground-truth boxes for the "
        "localisation metrics: 4 values per box, `ymin, xmin, ymax, xmax` in [0, 1], as TFDS "
        "stores them (`objects/bbox`)", parse=lambda text: text or None)
    mask_key: Optional[str] = option(
        None, "feature holding each record's ground-truth mask as PNG or JPEG bytes (nonzero "
        "pixels are the object), instead of `--boxes_key`", parse=lambda text: text or None)
    table: Optional[str] = option(
        None, "prefix of a Parquet table, one row per explained unit: "
        "`TABLE-SSSSS-of-NNNNN.parquet`")
    copy_features: Tuple[str, ...] = option(
        (), "input features copied into the table, comma-separated (`label,filename`): one "
        "int64, float or text value per record",
        parse=lambda text: parse_names(text, "copy_features"))
    strategies: bool = option(
        False, "find each unit's strategies (SpRAy): cluster a uniform sample of its maps, "
        "assign every record to the nearest cluster (the table's `cluster` column), keep the "
        "clusters in the manifest and the report")
    strategies_clusters: int = option(
        0, "clusters per unit (0: chosen by the eigengap, at most 8)")
    strategies_sample: int = option(
        500, "maps sampled per unit to fit its clusters (memory: units x sample x size²)")
    strategies_size: int = option(
        32, "side of the maps as SpRAy compares them (reduced by area averaging)")
    # Set from code only.
    devices: Optional[Tuple[str, ...]] = option(
        None, "devices of each worker's `MirroredStrategy` (default: its GPUs)",
        command_line=False)
    rebalance: Optional[bool] = option(
        None, "reshuffle the records after reading, so that the records of a few large files "
        "spread over a fleet's workers (default: except on DirectRunner, where it would hold "
        "every record in memory)", command_line=False)
    analysis: Optional[bool] = option(
        None, "make each explained record's analysis row, `pipeline.Explain`'s `analysis` "
        "output (default: with `metrics`, `copy_features` or `table`)", command_line=False)
    overview: bool = option(
        True, "make each handler call's overview (the report's numbers), `pipeline.Explain`'s "
        "`overview` output", command_line=False)
    handler_options: Mapping[str, Any] = option(
        {}, "more arguments of Beam's `ModelHandler` (`large_model`, `model_copies`, "
        "`env_vars`)", command_line=False)

    def __post_init__(self):
        for name in ("method_params", "metric_params", "handler_options"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))
        for name in ("image_shape", "image_size", "metrics", "copy_features", "devices"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        for name in ("top_k", "batch_size", "batches_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, not {getattr(self, name)}.")
        if self.strategies_clusters < 0 or self.strategies_sample < 3 or \
                self.strategies_size < 2:
            raise ValueError("--strategies_clusters is 0 (the eigengap) or more, "
                             "--strategies_sample at least 3, --strategies_size at least 2.")
        if self.num_shards < 0:
            raise ValueError(f"--num_shards must be 0 (as the runner decides) or more, not "
                             f"{self.num_shards}.")
        for name in ("image_format", "precision"):
            allowed = _FIELDS[name].metadata["choices"]
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} is one of {', '.join(allowed)}, not "
                                 f"{getattr(self, name)!r}.")
        get_encoding(self.map_encoding)
        if self.image_format == "raw" and not self.image_shape:
            raise ValueError("--image_format raw needs --image_shape H,W,C.")
        explain_params(methods.get(self.method), self.explain_params())
        check_metrics(self.metrics, self.metric_params)
        truth = [f"--{name}" for name in ("boxes_key", "mask_key") if getattr(self, name)]
        needing = [name for name in self.metrics if explain_metrics.get(name).ground_truth]
        if len(truth) == 2:
            raise ValueError("Give the ground truth as --boxes_key or as --mask_key, not both.")
        if needing and not truth:
            raise ValueError(f"--metrics {', '.join(needing)} needs ground truth: name the "
                             "feature holding each record's boxes (--boxes_key objects/bbox) "
                             "or mask (--mask_key).")
        if truth and not needing:
            users = [name for name in per_batch_metrics()
                     if explain_metrics.get(name).ground_truth]
            raise ValueError(f"{truth[0]} is used by the localisation metrics only: add "
                             f"{' or '.join(users)} to --metrics, or leave it out.")

    def explain_params(self) -> Dict[str, Any]:
        """`method_params` with the `resizing` that `map_size` says (`with_map_size`)."""
        return with_map_size(self.method_params, self.map_size)

    def metrics_with_params(self) -> Dict[str, Dict[str, Any]]:
        """{metric name: its parameters}, in the order `metrics` names them."""
        return {name: dict(self.metric_params.get(name, {})) for name in self.metrics}

    @property
    def ground_truth(self) -> Optional[str]:
        """"boxes", "masks" or None: what the localisation metrics are given."""
        return "boxes" if self.boxes_key else "masks" if self.mask_key else None

    @property
    def dead_letters(self) -> Optional[str]:
        """The dead-letter prefix, defaulting to OUTPUT.dead_letters."""
        if self.dead_letter_prefix or not self.output:
            return self.dead_letter_prefix
        return self.output + DEAD_LETTER_SUFFIX

    @property
    def makes_analysis(self) -> bool:
        """Whether `pipeline.Explain` makes analysis rows (`analysis`, by default with
        metrics, copied features or a table)."""
        if self.analysis is not None:
            return self.analysis
        return bool(self.metrics or self.copy_features or self.table or self.strategies)


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def command_line_fields(declared: type = Settings) -> Tuple[dataclasses.Field, ...]:
    """The fields of `declared` (`Settings`, or another command's settings declared with
    `option`, such as `pipeline.compare.CompareSettings`) that are command-line options, in
    the order `--help` lists them."""
    return tuple(f for f in dataclasses.fields(declared) if f.metadata["command_line"])


def add_arguments(parser, declared: type = Settings) -> None:
    """Declare every command-line field of `declared` as an option of `parser` (an argparse
    parser or group): `--NAME`, a flag for a bool, an int for an int, text otherwise (parsed
    by `from_arguments`)."""
    for field in command_line_fields(declared):
        meta = field.metadata
        if field.type is bool:
            parser.add_argument(f"--{field.name}", action="store_true", help=meta["help"])
            continue
        default = meta["text"] if meta["text"] is not None else field.default
        if default == ():
            default = None
        kind = int if field.type is int else None
        parser.add_argument(f"--{field.name}", default=default, type=kind,
                            choices=meta["choices"] or None, help=meta["help"])


def from_arguments(values: Mapping[str, Any], declared: type = Settings, **fixed) -> Any:
    """The `Settings` (or `declared`) of parsed command-line values (an argparse namespace's
    `vars`, or `PipelineOptions.get_all_options()`): each option's text through its field's
    `parse`; `fixed` gives the fields that are not command-line options."""
    given = dict(fixed)
    for field in command_line_fields(declared):
        value = values.get(field.name, field.default)
        parse = field.metadata["parse"]
        given[field.name] = parse(value) if parse is not None and (
            value is None or isinstance(value, str)) else value
    return declared(**given)


def options_table(declared: type = Settings) -> str:
    """The reference table of the command-line options of `declared` (markdown), as
    `docs/options.md` holds the job's."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for field in command_line_fields(declared):
        meta = field.metadata
        if meta["shown"] is not None:
            shown = meta["shown"]
        elif field.type is bool:
            shown = "off"
        elif field.default in (None, ()):
            shown = ""
        else:
            shown = f"`{field.default}`"
        rows.append(f"| `--{field.name}` | {shown} | {meta['help']} |")
    return "\n".join(rows) + "\n"


__all__ = [
    "DEAD_LETTER_SUFFIX",
    "IMAGE_FORMATS",
    "MAP_SIZES",
    "Settings",
    "add_arguments",
    "check_metrics",
    "explain_params",
    "command_line_fields",
    "from_arguments",
    "options_table",
    "parse_ints",
    "parse_json_object",
    "parse_map_size",
    "parse_names",
    "per_batch_metrics",
    "received_params",
    "resolve_method_params",
    "stored_map_size",
    "with_map_size",
]
