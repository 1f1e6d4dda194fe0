"""The job's launcher, what `python -m pipeline` (or `explain-pipeline`) runs: explain every
image in TFRecord files.

    python -m pipeline --input 'data/*.tfrecord*' --output out/expl --model model.keras \\
        --method gradcam [--units_key label | --top_k 3] [--runner DirectRunner ...]

Writes out/expl-SSSSS-of-NNNNN.tfrecord.gz (schema v2, read them with
`explain_lib.io.read_explanations`) and out/expl.dead_letters-SSSSS-of-NNNNN.tfrecord.gz
(records that could not be explained, with the stage and the error), with `--table` a
Parquet table (one row per explained unit), then writes out/expl.manifest.json (what
produced them, and with `--metrics` each metric's count, mean and quantiles per unit:
`pipeline.results.manifest`), prints the counts and checks that every record read was either
explained or dead-lettered.

Before anything runs, unknown arguments, bad options, unwritable output prefixes and missing
or corrupt files fail with one line and exit status 2. A job that fails (exit 1) or is
interrupted (exit 130) leaves no temporary files; a run that succeeds leaves exactly its own
shards under its prefixes (`pipeline.io.writing`).
"""

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineState

from pipeline.counters import (
    EXPLAINED_COUNTER,
    METRICS_NAMESPACE,
    READ_COUNTER,
    dead_letter_counter,
)
from pipeline.io import writing
from pipeline.io.dead_letters import STAGES
from pipeline.io.reading import DamagedFileError
from pipeline.io.writing import FILE_SUFFIX
from pipeline.job.options import JobOptions, check_arguments, job_settings
from pipeline.job.recording import now, record_run
from pipeline.job.transforms import aggregates_prefix, build_pipeline
from pipeline.results import aggregates
from pipeline.results.ids import (
    DUPLICATE_EXAMPLES,
    DUPLICATE_IDS_COUNTER,
    DUPLICATE_RECORDS_COUNTER,
    Duplicates,
)
from pipeline.results.overview import read_overview
from pipeline.results.strategies import SPILL_NAME, spill_path
from pipeline.results.table import TABLE_SUFFIX
from pipeline.settings import Settings


@dataclass
class RunSummary:
    """What a run did: records read, explained and dead-lettered per stage, the ids held by
    more than one record (`pipeline.results.ids`), and where the outputs are. `counted` is False
    when the runner reported no counters."""

    read: int = 0
    explained: int = 0
    dead_letters: Dict[str, int] = field(default_factory=dict)
    duplicates: Duplicates = Duplicates()
    explanations_pattern: str = ""
    dead_letters_pattern: str = ""
    table_pattern: str = ""
    counted: bool = True
    manifest: str = ""
    aggregates: Optional[Dict[str, Any]] = None
    strategies: Optional[Dict[str, Any]] = None

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def balanced(self) -> bool:
        """Every record read was explained or dead-lettered, exactly once."""
        return self.read == self.explained + self.dead_lettered

    def report(self) -> str:
        stages = ", ".join(
            f"{stage} {count}" for stage, count in self.dead_letters.items() if count
        )
        lines = [
            f"records read:          {self.read}",
            f"records explained:     {self.explained}",
            f"records dead-lettered: {self.dead_lettered}" + (f" ({stages})" if stages else ""),
            f"explanations: {self.explanations_pattern}",
            f"dead letters: {self.dead_letters_pattern}",
        ]
        if self.table_pattern:
            lines.append(f"table:        {self.table_pattern}")
        if self.duplicates.ids:
            lines.insert(3, f"duplicate ids:         {self.duplicates.describe()}")
        if self.manifest:
            lines.append(f"manifest:     {self.manifest}")
        if not self.counted:
            lines.insert(0, "The runner reported no counters: the counts below are unknown.")
        return "\n".join(lines)


def _metric_values(result) -> Optional[Dict[str, Any]]:
    """The job's counters (int) and string sets (sorted list) by name, committed values or
    attempted ones where the runner does not commit; None when the runner does not report
    metrics."""
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # noqa: BLE001 - some runners do not support metrics queries
        return None
    values: Dict[str, Any] = {}
    for counter in metrics["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    for strings in metrics.get("string_sets", []):
        value = strings.committed if strings.committed is not None else strings.attempted
        name = strings.key.metric.name
        values[name] = sorted(set(values.get(name, [])) | set(value or ()))
    return values


def summarize(result, settings: Settings) -> RunSummary:
    """The counts of a finished run (see `RunSummary`)."""
    values = _metric_values(result)
    summary = RunSummary(
        explanations_pattern=f"{settings.output}-*{FILE_SUFFIX}",
        dead_letters_pattern=f"{settings.dead_letters}-*{FILE_SUFFIX}",
        table_pattern=f"{settings.table}-*{TABLE_SUFFIX}" if settings.table else "",
        counted=values is not None,
    )
    values = values or {}
    summary.read = values.get(READ_COUNTER, 0)
    summary.explained = values.get(EXPLAINED_COUNTER, 0)
    summary.dead_letters = {stage: values.get(dead_letter_counter(stage), 0) for stage in STAGES}
    summary.duplicates = Duplicates(values.get(DUPLICATE_IDS_COUNTER, 0),
                                    values.get(DUPLICATE_RECORDS_COUNTER, 0),
                                    tuple(values.get(DUPLICATE_EXAMPLES, ())))
    return summary


def local_runner(options: PipelineOptions):
    """Beam's in-process Fn API runner when the options ask for DirectRunner (or no runner),
    else None (Beam creates the runner the options name).

    Beam 2.77's DirectRunner first tries Prism, a Go runner it downloads from GitHub on first
    use: offline (a locked-down worker, CI) that is a failed download on every run, and when
    it succeeds `--direct_num_workers` and `--direct_running_mode` no longer apply. The Fn API
    runner is the one DirectRunner falls back to for this job, and it honours both. Ask for
    `--runner=PrismRunner` to use Prism.
    """
    if options.view_as(StandardOptions).runner in (None, "DirectRunner"):
        return FnApiRunner()
    return None


def make_pipeline(argv: Optional[List[str]] = None):
    """The job's `beam.Pipeline` and settings from command-line arguments, built but not
    run.

    Raises ValueError for bad options and OSError for missing files or unwritable outputs:
    nothing has run yet.
    """
    check_arguments(sys.argv[1:] if argv is None else argv)  # what PipelineOptions parses
    options = PipelineOptions(argv)
    settings = job_settings(options)
    writing.check_writable(settings.output, "output")
    writing.check_writable(settings.dead_letters, "dead_letter_prefix")
    if settings.table:
        writing.check_writable(settings.table, "table")
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint == "embed" and not portable.environment_type:
        # The embedded job service would otherwise start its workers in Docker containers;
        # LOOPBACK runs them in this process, which is what "embed" is for.
        portable.environment_type = "LOOPBACK"
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
    build_pipeline(pipeline, settings)
    return pipeline, settings


def execute(pipeline: beam.Pipeline, settings: Settings, started) -> RunSummary:
    """Run a job `make_pipeline` built and wait for it; write its manifest, return its
    counts. Temporary files that killed runs left under the prefixes are removed first;
    a job that fails or is interrupted removes its own before the error propagates. The
    metric aggregates the job wrote are moved into the manifest."""
    prefixes = job_prefixes(settings)
    writing.remove_temporary_files(prefixes)
    result = None
    try:
        result = pipeline.run()
        result.wait_until_finish()
        if result.state in (PipelineState.FAILED, PipelineState.CANCELLED):
            raise RuntimeError(f"the runner reports the job {result.state}.")
    except BaseException:  # interrupted (KeyboardInterrupt) too
        _stop_and_clean(result, prefixes, spill_path(settings.output))
        raise
    summary = summarize(result, settings)
    summary.aggregates = _take_aggregates(settings)
    summary.strategies = _strategies(settings)
    summary.manifest = record_run(pipeline, settings, summary, started)
    return summary


def job_prefixes(settings: Settings) -> List[str]:
    """Every prefix the job writes under (its temporary folders are removed by prefix)."""
    prefixes = [settings.output, settings.dead_letters, aggregates_prefix(settings.output),
                spill_path(settings.output)]
    return prefixes + ([settings.table] if settings.table else [])


def _take_aggregates(settings: Settings) -> Optional[Dict[str, Any]]:
    """The metric aggregates the job wrote (`pipeline.results.aggregates`), read and their file
    removed: the manifest holds them from now on. None without metrics."""
    if not settings.metrics:
        return None  # (a file an earlier run with metrics left is not this run's)
    prefix = aggregates_prefix(settings.output)
    summary = aggregates.read_aggregates(prefix)
    if summary is not None:
        FileSystems.delete([aggregates.aggregates_path(prefix)])
    return summary


def _strategies(settings: Settings) -> Optional[Dict[str, Any]]:
    """With `--strategies`: each unit's clusters as the overview holds them (their summary,
    for the manifest), once the folder where the rows waited for them is removed."""
    if not settings.strategies:
        return None
    writing.remove_spill_files(spill_path(settings.output), SPILL_NAME)
    fitted = read_overview(settings.output).strategies
    return {str(unit): unit_strategies.summary() for unit, unit_strategies in sorted(
        fitted.items())}


def _stop_and_clean(result, prefixes, spill_folder: str) -> None:
    """After a failure or an interruption: cancel the job if it still runs (a remote job
    would go on writing), then remove the temporary files under `prefixes` and the
    strategies' spill files in `spill_folder`. Failing here must not hide why the job
    stopped, so errors are only logged."""
    try:
        if result is not None and not PipelineState.is_terminal(result.state):
            result.cancel()
        writing.remove_temporary_files(prefixes)
        writing.remove_spill_files(spill_folder, SPILL_NAME)
    except Exception as error:  # noqa: BLE001 - see the docstring
        logging.warning("Could not clean up after the job (%s: %s); the next run into the "
                        "same prefixes will.", type(error).__name__, error)


def run(argv: Optional[List[str]] = None) -> RunSummary:
    """Build and run the job from command-line arguments (`make_pipeline`, `execute`)."""
    started = now()
    pipeline, settings = make_pipeline(argv)
    return execute(pipeline, settings, started)


def failure_line(error: BaseException) -> str:
    """One line saying why a job failed: the last "SomeError: message" line of the error
    (runners pass a worker's error on as text, traceback included), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"([\w.]+\.)?\w+(Error|Exception): ", line)]
    line = (re.sub(r"^(\w+\.)+", "", named[-1]) if named  # without the module path
            else f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": "))
    return re.sub(r"\s*\[while running .*\]$", "", line)  # which step: Beam's log says


def _caused_by(error: BaseException, kind: type) -> bool:
    """Whether `error` or an error it was raised from is a `kind` (runners wrap a worker's
    KeyboardInterrupt in their own error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class _ExpectedStopFilter(logging.Filter):
    """Drops the traceback Beam logs when a DoFn stops for a reason the launcher reports in
    one line: a damaged input file under --strict_read (its message names the file and the
    offset), or an interruption."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (_caused_by(error, DamagedFileError) or _caused_by(error, KeyboardInterrupt))


def _quiet_expected_stops() -> None:
    """Install `_ExpectedStopFilter` on the logger of Beam's DoFn runner (which runs in this
    process on local runners; remote workers keep their logs)."""
    log = logging.getLogger("apache_beam.runners.common")
    if not any(isinstance(f, _ExpectedStopFilter) for f in log.filters):
        log.addFilter(_ExpectedStopFilter())


def print_help() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=__doc__.split("\n\n")[0] + " Every Beam pipeline option works too "
        "(--runner, --direct_num_workers, --project, ...).",
    )
    JobOptions._add_argparse_args(parser)
    parser.print_help()


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point: run, print the counts; exit 2 on bad options (before anything
    runs), 1 if the job fails or the records read are not all explained or dead-lettered,
    130 if it is interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print_help()
        return 0
    started = now()
    try:
        pipeline, settings = make_pipeline(argv)
    except (ValueError, OSError) as error:  # bad options, missing files: nothing ran
        print(f"explain-pipeline: {error}", file=sys.stderr)
        return 2
    _quiet_expected_stops()
    try:
        summary = execute(pipeline, settings, started)
    except BaseException as error:  # noqa: BLE001 - reported in one line; Beam logged the rest
        if _caused_by(error, KeyboardInterrupt):
            print("explain-pipeline: interrupted; its temporary files are removed, its "
                  "outputs are incomplete: run it again.", file=sys.stderr)
            return 130
        if not isinstance(error, Exception):
            raise
        print(f"explain-pipeline: the job failed: {failure_line(error)}", file=sys.stderr)
        return 1
    print(summary.report())
    if summary.counted and not summary.balanced:
        print(
            f"explain-pipeline: {summary.read} records read but {summary.explained} explained "
            f"and {summary.dead_lettered} dead-lettered: some records were lost or duplicated.",
            file=sys.stderr,
        )
        return 1
    return 0


