"""Bounded retries with exponential backoff, for the calls that touch storage once per file or
once per worker: opening an input file, copying and loading the model.

A transient failure (a dropped connection, a timeout, a storage service that is briefly
unavailable or throttling) is retried a few times, each retry logged with its delay;
a permanent one (not found, permission denied, a corrupt file) fails at once, since trying
again cannot change its answer. Cloud clients (google-cloud-storage under Beam's `gs://`
filesystem) already retry their own requests; this is the bounded layer above them, for the
filesystems that do not and for the errors that escape the client.

Usage:

    stream = Retry().call(lambda: FileSystems.open(path), f"opening {path}")
"""

import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH}

_TRANSIENT_NAMES = {
    # google.api_core.exceptions (google-cloud-storage): 429 and 5xx.
    "TooManyRequests", "InternalServerError", "BadGateway", "ServiceUnavailable",
    "GatewayTimeout", "DeadlineExceeded",
    # requests / urllib3, under the storage clients.
    "ConnectionError", "ChunkedEncodingError", "ReadTimeout", "ConnectTimeout", "ProtocolError",
}
"""Transient errors of libraries this module does not import, known by class name."""


def is_transient(error: BaseException) -> bool:
    """Whether trying again may succeed: connection and timeout errors, 429 and 5xx answers
    of a storage service, and Beam's `BeamIOError` when every error it wraps is transient.
    Not found, permission denied and anything else (a corrupt file, a bad argument) are
    permanent."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
        return False
    details = getattr(error, "exception_details", None)  # Beam's BeamIOError
    if isinstance(details, dict) and details:
        return all(is_transient(inner) for inner in details.values() if inner is not None)
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry: `attempts` tries in all, waiting
    `initial_delay` seconds after the first failure and twice as long after each next one,
    at most `max_delay`."""

    attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0

    def call(self, action: Callable[[], T], what: str) -> T:
        """`action()`, retried on transient errors; `what` names it in the logs ("opening
        gs://bucket/data-0.tfrecord"). The last error, or the first permanent one, is
        raised as it is."""
        attempt, delay = 1, self.initial_delay
        while True:
            try:
                return action()
            except Exception as error:  # noqa: BLE001 - sorted into transient and permanent
                if attempt >= self.attempts or not is_transient(error):
                    raise
                logging.warning("%s failed (attempt %d of %d, %s: %s); retrying in %.1f s.",
                                what, attempt, self.attempts, type(error).__name__, error,
                                delay)
                time.sleep(delay)
                attempt, delay = attempt + 1, min(2 * delay, self.max_delay)


__all__ = ["Retry", "is_transient"]
