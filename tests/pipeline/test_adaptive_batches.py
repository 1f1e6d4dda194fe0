"""Out-of-memory-adaptive batches (`pipeline.worker.adaptive_batches`): a batch that runs out of
memory is split in halves down to single records, the size that fits is kept for the
worker's next batches, only a record that does not fit alone is dead-lettered; through the
real handler and in a real Beam job."""

import logging

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.io.dead_letters import decode_dead_letter
from pipeline.job.launcher import local_runner
from pipeline.job.transforms import Explain
from pipeline.settings import Settings
from pipeline.worker.adaptive_batches import is_out_of_memory
from pipeline.worker.explaining import RecordMaps
from pipeline.worker.handler import RecordsHandler
from pipeline.worker.parsing import CheckedRecord, RecordSpec
from tests.pipeline.conftest import (
    assert_maps_match,
    expected_explanations,
    make_handler,
)

CALLS = []
"""Batch sizes the small-memory explainers were given, in call order (in-process runners
share this list with the test)."""


class SmallMemory:
    """An explainer on a device with room for `capacity` images at once: more, or a record
    asking for 3 units or more even alone, raise ResourceExhaustedError as TensorFlow does."""

    def __init__(self, explainer, capacity: int):
        self.explainer = explainer
        self.capacity = capacity

    def explain(self, images, units):
        CALLS.append(len(images))
        heavy = any(u is not None and len(u) >= 3 for u in units)
        if len(images) > self.capacity or heavy:
            raise tf.errors.ResourceExhaustedError(
                None, None, f"OOM when allocating tensor with shape[{len(images)},32,32,3]")
        return self.explainer.explain(images, units)


class Arithmetic:
    """Explains an image as its mean; an image holding 13 fails (not for lack of memory)."""

    def explain(self, images, units):
        if np.any(images == 13):
            raise RuntimeError("step failed")
        return [RecordMaps(np.array([0]), np.array([image.mean()], np.float32),
                            np.zeros((4, 4, 1), np.float32)) for image in images]


class SmallMemoryHandler(RecordsHandler):
    """The real handler, its real explainer behind `SmallMemory` (room for 3 images)."""

    def load_model(self):
        return SmallMemory(super().load_model(), capacity=3)


SPEC = RecordSpec(image_size=(4, 4), channels=3, num_units=5, image_shape=(4, 4, 3))


def _record(i, value=1.0, units=None):
    """A checked record whose image is a raw 4x4x3 tensor of `value`."""
    return CheckedRecord(f"r{i}", units, b"rec%d" % i, "raw",
                         np.full((4, 4, 3), value, np.float32))


def test_out_of_memory_is_recognised_by_type_or_message():
    assert is_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "failed"))
    assert is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                         "allocate 8.00GiB"))
    assert is_out_of_memory(ValueError("OOM when allocating tensor"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("step failed"))
    assert not is_out_of_memory(RuntimeError("ZOOM factor out of range"))


def test_the_handler_halves_batches_keeps_the_size_and_dead_letters_what_never_fits(caplog):
    CALLS.clear()
    handler = make_handler(SPEC, map_encoding="raw32", batch_size=8)
    explainer = SmallMemory(Arithmetic(), capacity=2)
    batch = [_record(i, 1.0 + i) for i in range(8)]
    batch[5] = _record(5, 6.0, units=np.array([0, 1, 2]))  # too heavy even alone
    batch[6] = _record(6, 13.0)  # fails for another reason: retried on its own
    caplog.set_level(logging.WARNING)

    results = list(handler.explain_checked(batch, explainer))

    assert [r.example.id for r in results] == [f"r{i}" for i in range(8)]
    # 8 and 4 do not fit; 2 does; the pair holding r5 is split without lowering the size
    # again (2 fitted before), r5 alone still fails; the pair holding r6 fails otherwise
    # and is retried record by record.
    assert CALLS == [8, 4, 2, 2, 2, 1, 1, 2, 1, 1]
    outcomes = {r.example.id: r.inference for r in results}
    assert [i for i in range(8) if isinstance(outcomes[f"r{i}"], bytes)] == [0, 1, 2, 3, 4, 7]
    assert [float(explain_io.decode_explanation(outcomes[f"r{i}"])["logits"][0])
            for i in (0, 3, 7)] == [1.0, 4.0, 8.0]
    assert outcomes["r5"].stage == "explain" and outcomes["r5"].record_id == "r5"
    assert str(outcomes["r5"]).startswith(
        "out of memory even alone: ResourceExhaustedError: OOM when allocating tensor")
    assert str(outcomes["r6"]) == "RuntimeError: step failed"
    lowered = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert lowered == [
        "Explaining 8 records at once ran out of memory; this worker now explains at most 4 "
        "records per batch.",
        "Explaining 4 records at once ran out of memory; this worker now explains at most 2 "
        "records per batch."]

    # The next batches of this worker (same model) come in pairs, at once.
    CALLS.clear()
    results = list(handler.explain_checked([_record(i) for i in range(7)], explainer))
    assert CALLS == [2, 2, 2, 1]
    assert all(isinstance(r.inference, bytes) for r in results)
    # Another model (another worker's) starts without a limit.
    CALLS.clear()
    list(handler.explain_checked([_record(i) for i in range(2)], SmallMemory(Arithmetic(), 8)))
    assert CALLS == [2]


def test_a_job_explains_in_the_batches_that_fit(model_path, model, shapes, caplog):
    images, labels = shapes
    units = [[int(label)] for label in labels]
    units[4] = [0, 1, 2]  # too heavy even alone
    records = [demo.make_example(demo.encode_image(image, "png"), unit, f"b{i}")
               for i, (image, unit) in enumerate(zip(images, units))]
    # One batch in flight, so that the order of the calls below is the order they learn in.
    settings = Settings(model=model_path, units_key="label", batch_size=8, batches_in_flight=1)
    transform = Explain(settings)
    transform.handler = SmallMemoryHandler(settings, transform.spec)
    CALLS.clear()
    caplog.set_level(logging.WARNING)

    good = [i for i in range(12) if i != 4]
    logits, maps = expected_explanations(model, images[good].astype(np.float32), labels[good])

    def explained_as_in_process(records):
        decoded = {d["id"]: d for d in map(explain_io.decode_explanation, records)}
        assert sorted(decoded) == sorted(f"b{i}" for i in good)
        for row, i in enumerate(good):
            assert_maps_match(decoded[f"b{i}"], maps[row], logits[row])

    with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
        result = p | beam.Create([records]) | transform  # one list of 12 records
        assert_that(result.explanations | "Records" >> beam.FlatMap(lambda records: records),
                    explained_as_in_process, label="explanations")
        assert_that(result.dead_letters | "Letters" >> beam.FlatMap(lambda letters: letters)
                    | beam.Map(
            lambda r: (decode_dead_letter(r).id, decode_dead_letter(r).stage,
                       decode_dead_letter(r).error.split(":")[0])),
            equal_to([("b4", "explain", "out of memory even alone")]), label="dead_letters")

    assert CALLS[:2] == [8, 4] and max(CALLS[2:]) == 2
    assert any("now explains at most 2 records per batch" in r.getMessage()
               for r in caplog.records)


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()
    yield
    CALLS.clear()
