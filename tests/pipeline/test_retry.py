"""Bounded retries (`pipeline.io.retry`): transient storage errors retried with exponential
backoff, each retry logged, permanent ones (not found, permission denied, corrupt) not;
loading a model through a Beam filesystem whose first opens fail. Opening input files is
tested in test_reading.py, Cloud Storage's permanent errors in test_gcs.py."""

import logging

import numpy as np
import pytest
from apache_beam.io.filesystem import BeamIOError

from pipeline.io import retry as retry_module
from pipeline.io.retry import Retry, is_transient
from pipeline.worker.models import load_keras_model
from tests.pipeline.conftest import FlakyFileSystem


def test_transient_and_permanent_errors():
    from google.api_core import exceptions as google

    for transient in (ConnectionResetError(104, "reset"), TimeoutError("timed out"),
                      OSError(110, "Connection timed out"), google.ServiceUnavailable("503"),
                      google.TooManyRequests("429"), google.InternalServerError("500"),
                      BeamIOError("Open failed", {"gs://b/x": ConnectionError("dropped")})):
        assert is_transient(transient), transient
    for permanent in (FileNotFoundError(2, "missing"), PermissionError(13, "denied"),
                      google.NotFound("404"), google.Forbidden("403"), ValueError("corrupt"),
                      OSError("Not a gzipped file"),
                      BeamIOError("Open failed", {"gs://b/x": FileNotFoundError("gone")})):
        assert not is_transient(permanent), permanent


def test_retries_back_off_exponentially_and_stop(monkeypatch, caplog):
    slept = []
    monkeypatch.setattr(retry_module.time, "sleep", slept.append)
    caplog.set_level(logging.WARNING)
    failures = [ConnectionResetError(104, "reset")] * 3

    def flaky():
        if failures:
            raise failures.pop()
        return "done"

    assert Retry(attempts=5, initial_delay=0.5, max_delay=1.5).call(flaky, "Reading x") == "done"
    assert slept == [0.5, 1.0, 1.5]
    assert [r.getMessage() for r in caplog.records] == [
        f"Reading x failed (attempt {n} of 5, ConnectionResetError: [Errno 104] reset); "
        f"retrying in {delay:.1f} s." for n, delay in ((1, 0.5), (2, 1.0), (3, 1.5))]

    calls = []

    def down():
        calls.append(1)
        raise TimeoutError("still down")

    with pytest.raises(TimeoutError, match="still down"):
        Retry(attempts=4, initial_delay=0.1).call(down, "Reading y")
    assert len(calls) == 4

    def missing():
        calls.append(1)
        raise FileNotFoundError(2, "No such file")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        Retry().call(missing, "Reading z")
    assert len(calls) == 1


def test_a_model_is_loaded_through_transient_errors_but_not_permanent_ones(
    model_path, model, caplog
):
    flaky = f"flakyfs://{model_path}"
    FlakyFileSystem.FAILURES[flaky] = [ConnectionResetError(104, "reset"),
                                       TimeoutError("timed out")]
    FlakyFileSystem.OPENS.pop(flaky, None)
    caplog.set_level(logging.WARNING)
    loaded = load_keras_model(flaky, retry=Retry(initial_delay=0.01))
    for mine, theirs in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert FlakyFileSystem.OPENS[flaky] == 3
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"Copying model file {flaky} failed"] * 2

    FlakyFileSystem.FAILURES[flaky] = [PermissionError(13, "Permission denied")]
    FlakyFileSystem.OPENS.pop(flaky)
    with pytest.raises(PermissionError):
        load_keras_model(flaky, retry=Retry(initial_delay=0.01))
    assert FlakyFileSystem.OPENS[flaky] == 1
