"""Multi-GPU workers, on two logical CPU devices: the handler's MirroredStrategy spreads
each batch over both replicas, with results equal to one device and in input order."""

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.job.launcher import local_runner
from pipeline.job.transforms import Explain
from pipeline.settings import Settings
from pipeline.worker.explaining import Worker
from tests.pipeline.conftest import assert_maps_match

DEVICES = ["/cpu:0", "/cpu:1"]


def test_explainer_on_two_replicas_equals_one_device_in_order(model_path, shapes):
    images, labels = shapes
    single = Worker.load(Settings(model=model_path))
    mirrored = Worker.load(Settings(model=model_path, devices=DEVICES))
    assert mirrored.model.distribute_strategy.num_replicas_in_sync == 2
    assert single.model.distribute_strategy.num_replicas_in_sync == 1
    units = [np.array([u]) for u in labels[:7]] + [None] * 2  # 9 images: odd, top-1 mixed in
    expected = single.explain(images[:9].astype(np.float32), units)
    got = mirrored.explain(images[:9].astype(np.float32), units)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g.units, e.units)
        np.testing.assert_allclose(g.logits, e.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.maps, e.maps, rtol=1e-5, atol=1e-6)


def test_the_job_with_a_two_replica_handler_equals_one_device(model_path, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"r{i}")
               for i, (im, label) in enumerate(zip(images, labels))]
    single = Worker.load(Settings(model=model_path, map_size="input"))
    # PNG is lossless: the job sees exactly these pixels.
    explained = single.explain(images.astype(np.float32), [np.array([u]) for u in labels])
    expected = {f"r{i}": e for i, e in enumerate(explained)}

    def matches(record):
        decoded = explain_io.decode_explanation(record)
        want = expected[decoded["id"]]
        assert_maps_match(decoded, want.maps, want.logits)
        return decoded["id"]

    with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
        result = (p | beam.Create([records])
                  | Explain(Settings(model=model_path, units_key="label", batch_size=5,
                            map_size="input", devices=DEVICES)))
        assert_that(result.explanations | beam.FlatMap(lambda records: records)
                    | beam.Map(matches),
                    equal_to([f"r{i}" for i in range(len(records))]))
