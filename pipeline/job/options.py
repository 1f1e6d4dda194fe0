"""The job's command line: `JobOptions`, a `PipelineOptions` subclass whose options are the
command-line fields of `pipeline.settings.Settings`, so that every Beam option (runner,
workers, Dataflow settings, ...) works alongside ours; `job_settings` turns the parsed
options into the job's `Settings`, checked for what the job needs (`check_job`).

Usage:

    options = PipelineOptions(["--input", "data/*.tfrecord", "--output", "out/expl",
                               "--model", "model.keras", "--method", "gradcam"])
    settings = job_settings(options)
"""

import difflib
import importlib
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.results.table import TABLE_COLUMNS
from pipeline.settings import Settings, add_arguments, from_arguments


class JobOptions(PipelineOptions):
    """The job's options (see `python -m pipeline --help`), declared by `Settings`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_arguments(parser.add_argument_group("explain_pipeline"))


def job_settings(options: PipelineOptions) -> Settings:
    """The `Settings` the parsed command line gives, checked for the job (`check_job`).
    Raises ValueError, one line naming the option, for a missing or malformed one."""
    values = options.view_as(JobOptions).get_all_options()
    if values.get("input") and values.get("tfds"):
        raise ValueError("Give --input or --tfds, not both.")
    missing = [name for name in ("output", "model") if not values.get(name)]
    if not (values.get("input") or values.get("tfds")):
        missing.insert(0, "input (or --tfds)")
    if missing:
        raise ValueError("Missing required option(s): "
                         + ", ".join(f"--{name}" for name in missing) + ".")
    settings = from_arguments(values)
    check_job(settings)
    return settings


def check_job(settings: Settings) -> None:
    """What the job needs beyond valid settings: that its prefixes do not collide, and that
    the table's options reach something without shadowing its columns."""
    if settings.dead_letters == settings.output:
        raise ValueError("--dead_letter_prefix must differ from --output.")
    if settings.copy_features and not settings.table:
        raise ValueError("--copy_features copies input features into the table: give "
                         "--table PREFIX too, or leave it out.")
    if settings.table:
        columns = TABLE_COLUMNS + tuple(settings.metrics)
        clashes = sorted(set(settings.copy_features) & set(columns))
        if clashes:
            raise ValueError(f"--copy_features {', '.join(clashes)} would shadow the "
                             "table's own column(s) of that name: the table already has "
                             f"{', '.join(columns)}.")
        output = settings.output
        if settings.table in (output, settings.dead_letters) or settings.table.startswith(
                output + "-"):
            raise ValueError(f"--table {settings.table} would mix its files with the "
                             f"explanations' ({output}-*): use another prefix, e.g. "
                             f"{output}.table.")


def check_arguments(argv: Sequence[str]) -> None:
    """Raise ValueError for an argument that is neither one of the job's options nor a Beam
    option, suggesting the closest option. Beam itself only logs and drops such an argument,
    so a misspelt `--methd scorecam` would run the default method.

    The options are those every `PipelineOptions` subclass declares (Beam's and
    `JobOptions`), parsed by Beam's own parser (no abbreviations). A runner given as a
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
