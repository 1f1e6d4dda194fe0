"""A runner outside Beam's core, for `test_cli`: like Dask's, it declares its options in its
own module (imported only when the runner is named), and runs the job in process."""

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner


class AddonOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--addon_label", default=None, help="Recorded by AddonRunner.")


class AddonRunner(FnApiRunner):
    """Beam's in-process runner that records the `--addon_label` it was given."""

    LABELS = []

    def run_pipeline(self, pipeline, options):
        self.LABELS.append(options.view_as(AddonOptions).addon_label)
        return super().run_pipeline(pipeline, options)
