"""The job's transforms: `Explain`, the PTransform that composes Beam's own to explain lists
of records, and `build_pipeline`, the whole job around it.

    lists of records -> [Reshuffle] -> RunInference(RecordsHandler) -> RouteResults
                     -> lists of explanations
    (RouteResults also emits the lists of dead letters; with a table or metrics, each
    explained record's analysis row, which `build_pipeline` writes as a Parquet table
    (`pipeline.results.table`) and summarises per metric and unit
    (`pipeline.results.aggregates`); each call's overview, which `KeepOverview` merges
    with the dead letters' messages into the file the report reads
    (`pipeline.results.overview`); and the lists of the records' ids, whose duplicates
    `pipeline.results.ids.CountDuplicateIds` reports)

The job's elements are lists of serialized records (`pipeline.io.reading.ReadTFRecords`
reads them so, `pipeline.io.writing.WriteShards` writes them so), sized to what one call of
the model handler takes, so that Beam's own work (each stage's dispatch, coding, windowing)
is paid once per list rather than once per record. Parsing, checking, decoding, explaining
and encoding all run in the handler, a batch at a time (`pipeline.worker`); everything after
the read is one fused stage, so a record is gone once written and memory does not grow with
the record count. Only the serialized records cross the optional shuffle (for distributed
runners): decoded pixels never travel between workers.

The dead letters of every stage are flattened into one PCollection. Counters (namespace
`explain_pipeline`, `pipeline.counters`) count what comes in (`records_read`), what comes
out (`records_explained`) and each kind of dead letter (`dead_letters_<stage>`), so that
read = explained + dead-lettered can be checked when the job ends.

Usage, inside any Beam pipeline:

    read = p | beam.Create(["data/*.tfrecord"]) | ReadTFRecords()
    result = read.records | Explain(Settings(model="model.keras", units_key="label"))
    result.explanations | WriteShards("out/expl")
    result.dead_letters | WriteShards("out/expl.dead_letters", 1)

(records from elsewhere, one per element, become lists with `beam.BatchElements()`.)
"""

import dataclasses
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from explain_lib import methods
from explain_lib import metrics as explain_metrics
from pipeline.counters import EXPLAINED_COUNTER, METRICS_NAMESPACE, READ_COUNTER
from pipeline.io import tfds as tfds_input
from pipeline.io.dead_letters import (
    DEAD_LETTERS,
    CountedStage,
    StageError,
    decode_dead_letter,
)
from pipeline.io.files import write_bytes
from pipeline.io.reading import ReadTFRecords, check_input, first_records
from pipeline.io.writing import WriteShards
from pipeline.job.checks import ModelInfo, inspect_model
from pipeline.results.aggregates import AggregateMetrics
from pipeline.results.ids import CountDuplicateIds
from pipeline.results.overview import Overview, overview_path
from pipeline.results.strategies import FitStrategies
from pipeline.results.table import WriteTable, table_schema
from pipeline.settings import Settings, stored_map_size
from pipeline.worker.encoding import Encoded
from pipeline.worker.explaining import resolve_preprocess
from pipeline.worker.handler import RecordsHandler, Results
from pipeline.worker.parsing import RecordSpec, feature_kinds

ANALYSIS = "analysis"
"""Tag of RouteResults' analysis rows (`pipeline.results.table.AnalysisRow`)."""

OVERVIEW = "overview"
"""Tag of RouteResults' per-batch overviews (`pipeline.results.overview.Overview`)."""

IDS = "ids"
"""Tag of RouteResults' lists of the ids of the records that passed the checks."""

STRATEGIES = "strategies"
"""Tag of RouteResults' per-batch `pipeline.results.strategies.StrategiesBatch`es."""


class RouteResults(CountedStage):
    """What RunInference made of each list of records (`pipeline.worker.handler.Results`),
    counted (read, explained, dead letters per stage) and routed: the list of the
    serialized schema-v2 records explained (the main output), the list of dead letters
    (tagged `DEAD_LETTERS`) of the records that failed (parse, validate, decode, explain,
    encode), the ids of the records that passed the checks (tagged `IDS`), and, when the
    handler made them, each explained record's analysis row (tagged `ANALYSIS`), each
    call's overview (tagged `OVERVIEW`) and each batch's rows and maps for the strategies
    (tagged `STRATEGIES`)."""

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
            if isinstance(outcome, Encoded):
                if outcome.row is not None:
                    yield beam.pvalue.TaggedOutput(ANALYSIS, outcome.row)
                if outcome.overview is not None:
                    yield beam.pvalue.TaggedOutput(OVERVIEW, outcome.overview)
                if outcome.strategies is not None:
                    yield beam.pvalue.TaggedOutput(STRATEGIES, outcome.strategies)
                outcome = outcome.record
            explained.append(outcome)
        self._explained.inc(len(explained))
        if explained:
            yield explained
        if dead_letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letters)
        if results.ids:
            yield beam.pvalue.TaggedOutput(IDS, results.ids)


class Outputs(NamedTuple):
    """What `Explain` makes: lists of serialized schema-v2 explanation records, lists of
    serialized dead letters (`pipeline.io.dead_letters`), each explained record's
    `pipeline.results.table.AnalysisRow` (empty unless the settings make analysis rows),
    each call's `pipeline.results.overview.Overview` (empty without `overview`) and each
    batch's `pipeline.results.strategies.StrategiesBatch` (empty without `strategies`)."""

    explanations: beam.PCollection
    dead_letters: beam.PCollection
    analysis: Optional[beam.PCollection] = None
    overview: Optional[beam.PCollection] = None
    strategies: Optional[beam.PCollection] = None


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
                 strategies: Optional[beam.PCollection] = None, label=None):
        super().__init__(label)
        self.strategies = strategies
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
        joined = ((explained, messages)
                  | "Both" >> beam.Flatten()
                  | "Join" >> merged())
        if self.strategies is None:
            return joined | "Write" >> beam.Map(
                lambda overview: write_bytes(path, overview.to_bytes()))

        def write(overview, strategies):
            overview.strategies = dict(strategies)
            return write_bytes(path, overview.to_bytes())

        return joined | "Write" >> beam.Map(write, beam.pvalue.AsSingleton(self.strategies))


class Explain(beam.PTransform):
    """Explain a PCollection of lists of serialized `tf.train.Example`s holding images (as
    `pipeline.io.reading.ReadTFRecords` emits them, or `beam.BatchElements()` makes them),
    as `settings` say (`pipeline.settings.Settings`: the model, the method and its
    parameters, how records are read, how maps are stored, the metrics).

        lists of records -> [Reshuffle] -> RunInference(RecordsHandler) -> RouteResults

    Records that fail any stage become dead letters. With `settings.rebalance` (by default
    everywhere but DirectRunner, where it would only hold every record in memory at once), a
    `Reshuffle` of the lists of serialized records right after reading, so that the
    compressed records alone cross it, spreads the records of a few large files over a
    fleet's workers.

    The model is loaded once here, at construction, to learn its input size and number of
    units and to check the method and metrics on it (`pipeline.job.checks.inspect_model`;
    pass `model_info` to skip that), and once per worker process to explain (once in all,
    for an in-process runner). `feature_kinds` gives the kind ("int64", "float" or "bytes")
    of each of `settings.copy_features` (`pipeline.worker.parsing.feature_kinds` finds them
    in the input records).

    Usage:

        result = read.records | Explain(Settings(model="model.keras", top_k=3))
        result.explanations, result.dead_letters
    """

    def __init__(self, settings: Settings, *, feature_kinds: Optional[Mapping[str, str]] = None,
                 model_info: Optional[ModelInfo] = None, label: Optional[str] = None):
        super().__init__(label)
        # Everything that can be wrong fails here, in the launcher, before any work, rather
        # than on every worker or every record.
        resolve_preprocess(settings.preprocess)
        kinds = dict(feature_kinds or {})
        unknown = [name for name in settings.copy_features if name not in kinds]
        if unknown:
            raise ValueError(f"copy_features {', '.join(unknown)}: give each feature's kind in "
                             "feature_kinds (pipeline.worker.parsing.feature_kinds finds them "
                             "in the input records).")
        info = model_info or inspect_model(settings)
        if not 1 <= settings.top_k <= info.num_units:
            raise ValueError(f"--top_k {settings.top_k} does not fit the model's "
                             f"{info.num_units} output units: ask for 1 to {info.num_units}.")
        image_shape = settings.image_shape
        self.spec = RecordSpec(
            image_size=_image_size(info, settings.image_size),
            channels=info.input_shape[2] or (image_shape[2] if image_shape else 3),
            num_units=info.num_units,
            image_key=settings.image_key,
            image_format=settings.image_format,
            image_shape=image_shape,
            id_key=settings.id_key or None,
            units_key=settings.units_key or None,
            boxes_key=settings.boxes_key or None,
            mask_key=settings.mask_key or None,
            copy_features=tuple((name, kinds[name]) for name in settings.copy_features),
        )
        self.settings = settings
        self.handler = RecordsHandler(settings, self.spec)
        self.map_size = stored_map_size(settings.explain_params()["resizing"],
                                        methods.get(settings.method).upsampled)

    def expand(self, records):
        # (No return annotation: Beam would read it as a type hint, and Outputs is a tuple
        # of PCollections rather than one.)
        rebalance = self.settings.rebalance
        if rebalance is None:
            rebalance = not runs_in_process(records.pipeline)
        if rebalance:
            records = records | "Rebalance" >> beam.Reshuffle()
        explained, dead_letters, analysis, overview, ids, strategies = (
            records
            | "RunInference" >> RunInference(self.handler)
            | "RouteResults" >> beam.ParDo(RouteResults()).with_outputs(
                DEAD_LETTERS, ANALYSIS, OVERVIEW, IDS, STRATEGIES, main="explanations")
        )
        ids | "CountDuplicateIds" >> CountDuplicateIds()  # reported, still explained
        return Outputs(explained, dead_letters, analysis, overview, strategies)


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


def build_pipeline(pipeline: beam.Pipeline, settings: Settings) -> Outputs:
    """The whole job on `pipeline`: read -> Explain -> write results and dead letters (of
    damaged input files too), the overview, and with `table` or metrics the table and the
    metric aggregates; with `strategies`, each unit's clusters (`pipeline.results.strategies`)
    in the overview and the table's `cluster` column."""
    files = [settings.input]
    if settings.tfds:
        source = tfds_input.resolve(settings.tfds, settings.tfds_data_dir, settings.split)
        files = source.files
        settings = dataclasses.replace(
            settings, image_key=source.image_key, image_format=source.image_format,
            units_key=settings.units_key or source.units_key)
    else:
        check_input(settings.input)
    kinds = (feature_kinds(first_records(files), settings.copy_features)
             if settings.copy_features else None)
    explain = Explain(settings, feature_kinds=kinds)
    read = (pipeline | "InputFiles" >> beam.Create(files)
            | "Read" >> ReadTFRecords(strict=settings.strict_read,
                                      records_per_list=explain.handler.records_per_call))
    explained = read.records | "Explain" >> explain
    result = Outputs(
        explained.explanations,
        (read.dead_letters, explained.dead_letters) | "AllDeadLetters" >> beam.Flatten(),
        explained.analysis,
        explained.overview,
        explained.strategies,
    )
    result.explanations | "WriteExplanations" >> WriteShards(settings.output,
                                                             settings.num_shards)
    result.dead_letters | "WriteDeadLetters" >> WriteShards(settings.dead_letters, 1)
    metrics = list(settings.metrics)
    directions = {name: explain_metrics.get(name).higher_is_better for name in metrics}
    features = dict(explain.spec.copy_features)
    fitted, rows = None, result.analysis
    if settings.strategies:
        # The table's rows come from the strategies, as tables with their cluster column.
        schema = table_schema(metrics, features, True) if settings.table else None
        fitted, rows = result.strategies | "FitStrategies" >> FitStrategies(
            settings.output, settings.strategies_sample, settings.strategies_clusters,
            schema=schema)
    (result.overview, result.dead_letters) | "KeepOverview" >> KeepOverview(
        settings.output, metrics, directions, fitted)
    if settings.table:
        rows | "WriteTable" >> WriteTable(settings.table, metrics, features, settings.num_shards,
                                          strategies=settings.strategies)
    if metrics:
        result.analysis | "AggregateMetrics" >> AggregateMetrics(
            metrics, aggregates_prefix(settings.output))
    return result


def aggregates_prefix(output: str) -> str:
    """Where a run writes its metric aggregates while it runs (`pipeline.results.aggregates`): the
    launcher moves them into the manifest, and removes the file."""
    return output + ".aggregates"
