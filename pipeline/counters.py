"""The job's Beam metrics, below every module that counts or reads them: their namespace
and the names of the counters that check read = explained + dead-lettered.

Usage:

    Metrics.counter(METRICS_NAMESPACE, READ_COUNTER).inc(len(records))
    Metrics.counter(METRICS_NAMESPACE, dead_letter_counter("decode")).inc()
"""

METRICS_NAMESPACE = "explain_pipeline"
"""The namespace of every metric the job reports."""

READ_COUNTER = "records_read"
EXPLAINED_COUNTER = "records_explained"


def dead_letter_counter(stage: str) -> str:
    """Name of the counter of dead letters from `stage`."""
    return f"dead_letters_{stage}"


__all__ = ["EXPLAINED_COUNTER", "METRICS_NAMESPACE", "READ_COUNTER", "dead_letter_counter"]
