"""The job's stages, and `Explain`, the PTransform that chains them.

    lists of records -> [Rebalance] -> RunInference(ExplainModelHandler) -> Outcomes
                     -> lists of explanations
    (Outcomes also emits the lists of dead letters; with a table or metrics, each explained
    record's analysis row, which `build_pipeline` writes as a Parquet table
    (`pipeline.results.table`) and summarises per metric and unit (`pipeline.results.aggregates`); each
    batch's overview, which `KeepOverview` merges with the dead letters' messages into the
    file the report reads (`pipeline.results.overview`); and the lists of the records' ids, whose
    duplicates `pipeline.results.ids.CountDuplicateIds` reports)

The job's elements are lists of serialized records (`pipeline.io.reading.ReadTFRecords` reads
them so, `write_tfrecords` writes them so), sized to what one call of the model handler
takes, so that Beam's own work (each stage's dispatch, coding, windowing) is paid once per
list rather than once per record. Parsing, checking, decoding, explaining and encoding all
run in the handler, a batch at a time; everything after the read is one fused stage, so a
record is gone once written and memory does not grow with the record count. Only the
serialized records cross the optional shuffle (`Rebalance`, for distributed runners):
decoded pixels never travel between workers.

Each stage is a small DoFn with a main output and a "dead_letters" output; the dead letters
of every stage are flattened into one PCollection. Counters (namespace
`explain_pipeline`) count what comes in (`records_read`), what comes out
(`records_explained`) and each kind of dead letter (`dead_letters_<stage>`), so that
read = explained + dead-lettered can be checked when the job ends.

Usage, inside any Beam pipeline:

    read = p | beam.Create(["data/*.tfrecord"]) | ReadTFRecords()
    result = read.records | Explain("model.keras", "gradcam", units_key="label")
    result.explanations | write_tfrecords("out/expl")
    result.dead_letters | write_tfrecords("out/expl.dead_letters")

(records from elsewhere, one per element, become lists with `beam.BatchElements()`.)
"""

import json
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from explain_lib import io as explain_io
from explain_lib import metrics as explain_metrics
from explain_lib.utils import PRECISIONS
from pipeline.counters import EXPLAINED_COUNTER, METRICS_NAMESPACE, READ_COUNTER
from pipeline.io import tfds as tfds_input
from pipeline.io.dead_letters import (
    DEAD_LETTERS,
    CountedStage,
    StageError,
    decode_dead_letter,
)
from pipeline.io.files import write_bytes
from pipeline.io.writing import WriteShards
from pipeline.job.options import (
    ExplainOptions,
    parse_ints,
    parse_metrics,
    stored_map_size,
    with_map_size,
)
from pipeline.results.aggregates import AggregateMetrics
from pipeline.results.ids import CountDuplicateIds
from pipeline.results.overview import Overview, overview_path
from pipeline.results.table import WriteTable
from pipeline.worker.explainer import (
    ExplainerConfig,
    ModelInfo,
    explain_params,
    inspect_model,
    resolve_method,
    resolve_preprocess,
)
from pipeline.worker.handler import (
    BATCHES_IN_FLIGHT,
    Explained,
    ExplainModelHandler,
    Results,
)
from pipeline.worker.records import RecordSpec, feature_kinds

ANALYSIS = "analysis"
"""Tag of Outcomes' analysis rows (`pipeline.results.table.AnalysisRow`)."""

OVERVIEW = "overview"
"""Tag of Outcomes' per-batch overviews (`pipeline.results.overview.Overview`)."""

IDS = "ids"
"""Tag of Outcomes' lists of the ids of the records that passed the checks."""

class Outcomes(CountedStage):
    """What RunInference made of each list of records (`pipeline.worker.handler.Results`), counted
    (read, explained, dead letters per stage): the list of the serialized schema-v2 records
    explained, the list of dead letters (tagged `DEAD_LETTERS`) of the records that failed
    (parse, validate, decode, explain, encode), the ids of the records that passed the
    checks (tagged `IDS`), and, when the handler made them, each explained record's
    analysis row (tagged `ANALYSIS`) and each batch's overview (tagged `OVERVIEW`)."""

    def setup(self):
        super().setup()
        self._read = Metrics.counter(METRICS_NAMESPACE, READ_COUNTER)
        self._explained = Metrics.counter(METRICS_NAMESPACE, EXPLAINED_COUNTER)

    def process(self, results: Results):
        self._read.inc(len(results.records))
        explained, dead_letters = [], []
        for record, outcome in zip(results.records, results.outcomes):
            if isinstance(outcome, StageError):
                dead_letters.append(self.dead_letter(record, outcome))
                continue
            if isinstance(outcome, Explained):
                if outcome.row is not None:
                    yield beam.pvalue.TaggedOutput(ANALYSIS, outcome.row)
                if outcome.overview is not None:
                    yield beam.pvalue.TaggedOutput(OVERVIEW, outcome.overview)
                outcome = outcome.record
            explained.append(outcome)
        self._explained.inc(len(explained))
        if explained:
            yield explained
        if dead_letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letters)
        if results.ids:
            yield beam.pvalue.TaggedOutput(IDS, results.ids)


class ExplainResult(NamedTuple):
    """The outputs of `Explain`: lists of serialized schema-v2 explanation records, lists of
    serialized dead letters (see `pipeline.worker.records.encode_dead_letter`), each explained
    record's
    `pipeline.results.table.AnalysisRow` (empty unless `Explain` was asked for `analysis`), and
    each batch's `pipeline.results.overview.Overview` (empty unless asked for `overview`)."""

    explanations: beam.PCollection
    dead_letters: beam.PCollection
    analysis: Optional[beam.PCollection] = None
    overview: Optional[beam.PCollection] = None


class OverviewCombineFn(beam.CombineFn):
    """Batch overviews and dead letters' (stage, message) -> one `Overview` of the run.
    The accumulator is an `Overview`: bounded by the units and the examples, not the
    records (`pipeline.results.overview`)."""

    def __init__(self, names: Sequence[str], higher_is_better: Mapping[str, bool]):
        self._names, self._higher = list(names), dict(higher_is_better)

    def create_accumulator(self) -> Overview:
        return Overview(self._names, self._higher)

    def add_input(self, accumulator: Overview, item) -> Overview:
        if isinstance(item, Overview):
            return accumulator.merge(item)
        stage, message = item
        return accumulator.count_dead_letter(stage, message)

    def merge_accumulators(self, accumulators) -> Overview:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: Overview) -> Overview:
        return accumulator


def _stage_and_message(serialized: bytes) -> Tuple[str, str]:
    letter = decode_dead_letter(serialized)
    return letter.stage, letter.error


class KeepOverview(beam.PTransform):
    """(`Explain`'s overview, every dead letter) -> the run's overview, written once as
    PREFIX.overview.npz (`pipeline.results.overview`) for `python -m pipeline.report`."""

    def __init__(self, output: str, names: Sequence[str], higher_is_better: Mapping[str, bool],
                 label=None):
        super().__init__(label)
        self.path = overview_path(output)
        self.names, self.higher_is_better = list(names), dict(higher_is_better)

    def expand(self, inputs):
        overviews, dead_letters = inputs
        path = self.path

        def merged():
            return beam.CombineGlobally(OverviewCombineFn(self.names, self.higher_is_better))

        # The batches' overviews are combined straight from the stage that makes them, so
        # that Beam merges each into its accumulator as it comes (combiner lifting). Flattened
        # with the dead letters first, they would be buffered, every one of them, until the
        # flatten's consumer runs (DirectRunner: a pickled batch of images per batch).
        explained = overviews | "Merge" >> merged()
        messages = (dead_letters
                    | "Messages" >> beam.FlatMap(lambda letters: map(_stage_and_message,
                                                                     letters))
                    | "CountMessages" >> merged())
        return ((explained, messages)
                | "Both" >> beam.Flatten()
                | "Join" >> merged()
                | "Write" >> beam.Map(lambda overview: write_bytes(path, overview.to_bytes())))


class Explain(beam.PTransform):
    """Explain a PCollection of lists of serialized `tf.train.Example`s holding images (as
    `pipeline.io.reading.ReadTFRecords` emits them, or `beam.BatchElements()` makes them).

        lists of records -> [Rebalance] -> RunInference(ExplainModelHandler)
                         -> Outcomes -> lists of explanations (+ lists of dead letters)

    Parses and validates each record, then in batches decodes the images, explains them
    through `explain_lib` (with each unit's probability, and the `metrics`' scores) and
    encodes each result as a schema-v2 record (`explain_lib.io`): the handler's three
    batched steps, fused with reading and writing in one stage. Records that fail at any
    stage become dead letters. With `analysis`, the result's third output holds each
    explained record's `pipeline.results.table.AnalysisRow` (statistics, metrics, copied features).

    `rebalance` (a `Reshuffle` of the lists of serialized records right after reading, so
    that the compressed records alone cross it) spreads the records of a few large files over a
    fleet's workers. On Beam's local in-process runner (DirectRunner) it would only hold
    every record in memory at once, so by default it is left out there and used elsewhere.

    The model is loaded once here, at construction, to learn its input size and number of
    units and to check the method on it (pass `model_info` to skip that), and once per
    worker process to explain (once in all, for an in-process runner).

    Args:
        model_path: Keras `.keras` file, on any Beam filesystem.
        method: method name, for instance "gradcam".
        method_params: the method's parameters (JSON values, see `--method_params`).
        image_key, image_format, image_shape, id_key, units_key: how to read the records
            (see `pipeline.worker.records.RecordSpec`).
        top_k: units to explain per record when the record has none.
        image_size: (H, W) to resize images to (default: the model's input size).
        preprocess: "none", "unit", "symmetric" or a `keras.applications` module name.
        activation_layer: the layer CAM methods weigh.
        batch_size: records per explaining step.
        batches_in_flight: batches each worker thread keeps in flight on threads sharing
            the model, one's decoding and encoding overlapping another's explaining (the
            model explains one at a time; see `pipeline.worker.handler`); 1: one at a time.
        map_encoding: how maps are stored (`explain_lib.io.ENCODINGS`).
        map_size: the size maps are stored at: "auto", "input", "native", (H, W) or "H,W"
            (default: `method_params`' resizing if given, else "auto"; see
            `options.with_map_size`).
        precision: the Keras dtype policy the model computes under
            (`explain_lib.utils.PRECISIONS`).
        jit_compile: explain under XLA.
        metrics: metrics scoring each record's maps, by name, with their parameters:
            `{"deletion": {"n_steps": 20}, "pointing_game": {}}` (`--metrics`,
            `--metric_params`; checked before any work).
        boxes_key, mask_key: the feature holding each record's ground truth for the
            localisation metrics (see `pipeline.worker.records.RecordSpec`).
        copy_features: input features copied into the analysis rows, name -> kind
            ("int64", "float" or "bytes"; `pipeline.worker.records.feature_kinds` finds them).
        analysis: make each explained record's analysis row (default: with metrics).
        overview: make each batch's `pipeline.results.overview.Overview` (the report's numbers).
        devices: devices of each worker's `MirroredStrategy` (default: its GPUs).
        rebalance: reshuffle the records after reading (default: except on DirectRunner).
        model_info: the model's `ModelInfo`, when the caller knows it already.
        handler_kwargs: more `ModelHandler` arguments (`large_model`, `model_copies`, ...).

    Usage:

        result = read.records | Explain("model.keras", "gradcam", top_k=3)
        result.explanations, result.dead_letters
    """

    def __init__(
        self,
        model_path: str,
        method: str = "gradcam",
        method_params: Optional[Mapping[str, Any]] = None,
        *,
        image_key: str = "image",
        image_format: str = "auto",
        image_shape: Optional[Sequence[int]] = None,
        id_key: Optional[str] = "id",
        units_key: Optional[str] = None,
        top_k: int = 1,
        image_size: Optional[Sequence[int]] = None,
        preprocess: str = "none",
        activation_layer: Optional[str] = None,
        batch_size: int = 32,
        batches_in_flight: int = BATCHES_IN_FLIGHT,
        map_encoding: str = explain_io.DEFAULT_ENCODING,
        map_size: Union[None, str, Sequence[int]] = None,
        precision: str = "float32",
        jit_compile: bool = False,
        metrics: Optional[Mapping[str, Mapping[str, Any]]] = None,
        boxes_key: Optional[str] = None,
        mask_key: Optional[str] = None,
        copy_features: Optional[Mapping[str, str]] = None,
        analysis: Optional[bool] = None,
        overview: bool = True,
        devices: Optional[Sequence[str]] = None,
        rebalance: Optional[bool] = None,
        model_info: Optional[ModelInfo] = None,
        handler_kwargs: Optional[Mapping[str, Any]] = None,
        label: Optional[str] = None,
    ):
        super().__init__(label)
        # Everything that can be wrong with the options fails here, in the launcher, before
        # any work, rather than on every worker or every record.
        explain_io.get_encoding(map_encoding)
        resolve_preprocess(preprocess)
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: use one of "
                             f"{', '.join(PRECISIONS)}.")
        method_params = with_map_size(method_params, map_size)
        registered = resolve_method(method)
        explain_params(registered, method_params)
        metrics = {name: dict(params) for name, params in (metrics or {}).items()}
        parse_metrics(",".join(metrics), json.dumps(metrics))  # names and parameters
        truth = "boxes" if boxes_key else "masks" if mask_key else None
        info = model_info or inspect_model(model_path, method, activation_layer, method_params,
                                           image_size, top_k, metrics, truth,
                                           named_units=bool(units_key))
        if not 1 <= top_k <= info.num_units:
            raise ValueError(f"--top_k {top_k} does not fit the model's {info.num_units} output "
                             f"units: ask for 1 to {info.num_units}.")
        self.spec = RecordSpec(
            image_size=_image_size(info, image_size),
            channels=info.input_shape[2] or (image_shape[2] if image_shape else 3),
            num_units=info.num_units,
            image_key=image_key,
            image_format=image_format,
            image_shape=tuple(image_shape) if image_shape else None,
            id_key=id_key,
            units_key=units_key,
            boxes_key=boxes_key,
            mask_key=mask_key,
            copy_features=tuple((copy_features or {}).items()),
        )
        self.config = ExplainerConfig(
            model_path, method, method_params, activation_layer=activation_layer,
            preprocess=preprocess, top_k=top_k, precision=precision,
            jit_compile=jit_compile, devices=tuple(devices) if devices else None,
            metrics=metrics,
        )
        self.analysis = bool(metrics or copy_features) if analysis is None else analysis
        self.handler = ExplainModelHandler(self.config, self.spec, map_encoding,
                                           batch_size=batch_size,
                                           batches_in_flight=batches_in_flight,
                                           analysis=self.analysis,
                                           overview=overview,
                                           **dict(handler_kwargs or {}))
        self.map_encoding = map_encoding
        self.map_size = stored_map_size(method_params["resizing"], registered.upsampled)
        self.rebalance = rebalance

    @classmethod
    def from_options(cls, options: ExplainOptions, **overrides) -> "Explain":
        """The transform the command line's options describe; `overrides` replace any of
        the keyword arguments (`copy_features`, whose kinds come from the input records,
        is one: `build_pipeline` finds them)."""
        arguments = dict(
            image_key=options.image_key,
            image_format=options.image_format,
            image_shape=parse_ints(options.image_shape, 3, "image_shape"),
            id_key=options.id_key or None,
            units_key=options.units_key or None,
            top_k=options.top_k,
            image_size=parse_ints(options.image_size, 2, "image_size"),
            preprocess=options.preprocess,
            activation_layer=options.activation_layer,
            batch_size=options.batch_size,
            batches_in_flight=options.batches_in_flight,
            map_encoding=options.map_encoding,
            map_size=options.map_size,
            precision=options.precision,
            jit_compile=options.jit_compile,
            metrics=options.parsed_metrics(),
            boxes_key=options.boxes_key or None,
            mask_key=options.mask_key or None,
            analysis=bool(options.table or options.parsed_metrics()),
        )
        arguments.update(overrides)
        return cls(options.model, options.method, options.parsed_method_params(), **arguments)

    def expand(self, records):
        # (No return annotation: Beam would read it as a type hint, and ExplainResult is a
        # tuple of PCollections rather than one.)
        rebalance = self.rebalance
        if rebalance is None:
            rebalance = not runs_in_process(records.pipeline)
        if rebalance:
            records = records | "Rebalance" >> beam.Reshuffle()
        explained, dead_letters, analysis, overview, ids = (
            records
            | "RunInference" >> RunInference(self.handler)
            | "Outcomes" >> beam.ParDo(Outcomes()).with_outputs(
                DEAD_LETTERS, ANALYSIS, OVERVIEW, IDS, main="explanations")
        )
        ids | "CountDuplicateIds" >> CountDuplicateIds()  # reported, still explained
        return ExplainResult(explained, dead_letters, analysis, overview)


def runs_in_process(pipeline: beam.Pipeline) -> bool:
    """Whether `pipeline` runs on Beam's local in-process runner (DirectRunner, or its Fn
    API runner given as an object), where a shuffle holds its whole input in memory."""
    runner = pipeline.runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner")


def _image_size(info: ModelInfo, image_size: Optional[Sequence[int]]) -> Tuple[int, int]:
    model_size = tuple(info.input_shape[:2])
    if image_size is not None:
        image_size = tuple(int(v) for v in image_size)
        if None not in model_size and image_size != model_size:
            raise ValueError(
                f"image_size {image_size} differs from the model's input size {model_size}; "
                "leave it out to resize to the model's size."
            )
        return image_size
    if None in model_size:
        raise ValueError(
            f"The model takes images of any size ({info.input_shape}): pass --image_size H,W."
        )
    return model_size


def write_tfrecords(prefix: str, num_shards: int = 0) -> beam.PTransform:
    """The job's writer, of lists of serialized records: GZIP-compressed, sharded TFRecord
    files
    PREFIX-SSSSS-of-NNNNN.tfrecord.gz; once they are in place, the shards an earlier run
    left under the same prefix are deleted (`pipeline.io.writing.WriteShards`)."""
    return WriteShards(prefix, num_shards)


def build_pipeline(pipeline: beam.Pipeline, options: ExplainOptions) -> ExplainResult:
    """The whole job on `pipeline`: read -> Explain -> write results and dead letters (of
    damaged input files too)."""
    from pipeline.io.reading import ReadTFRecords, check_input, first_records

    if options.tfds:
        source = tfds_input.resolve(options.tfds, options.tfds_data_dir, options.split)
        files = source.files
        layout = dict(image_key=source.image_key, image_format=source.image_format,
                      units_key=options.units_key or source.units_key)
    else:
        check_input(options.input)
        files, layout = [options.input], {}
    copied = options.parsed_copy_features()
    if copied:
        layout["copy_features"] = feature_kinds(first_records(files), copied)
    explain = Explain.from_options(options, **layout)
    read = (pipeline | "InputFiles" >> beam.Create(files)
            | "Read" >> ReadTFRecords(strict=options.strict_read,
                                      records_per_list=explain.handler.records_per_call))
    explained = read.records | "Explain" >> explain
    result = ExplainResult(
        explained.explanations,
        (read.dead_letters, explained.dead_letters) | "AllDeadLetters" >> beam.Flatten(),
        explained.analysis,
        explained.overview,
    )
    result.explanations | "WriteExplanations" >> write_tfrecords(options.output, options.num_shards)
    result.dead_letters | "WriteDeadLetters" >> write_tfrecords(options.dead_letters, 1)
    metrics = list(explain.config.metrics)
    directions = {name: explain_metrics.get(name).higher_is_better for name in metrics}
    (result.overview, result.dead_letters) | "KeepOverview" >> KeepOverview(
        options.output, metrics, directions)
    if options.table:
        result.analysis | "WriteTable" >> WriteTable(
            options.table, metrics, dict(explain.spec.copy_features), options.num_shards)
    if metrics:
        result.analysis | "AggregateMetrics" >> AggregateMetrics(
            metrics, aggregates_prefix(options.output))
    return result


def aggregates_prefix(output: str) -> str:
    """Where a run writes its metric aggregates while it runs (`pipeline.results.aggregates`): the
    launcher moves them into the manifest, and removes the file."""
    return output + ".aggregates"
