"""Packaging for explain_lib (the explaining core) and pipeline (the Beam batch job)."""

from setuptools import find_packages, setup

setup(
    name="explain-lib",
    version="0.1.0",
    description="Explain Keras models' predictions, from one image to a whole dataset on Beam.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The launcher's Python minor version must be the workers' (docker/Dockerfile builds
    # them on Beam's Python 3.11 SDK harness): Beam pickles the job's code between them.
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["explain_lib", "explain_lib.*", "pipeline", "pipeline.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "numpy>=2,<3",
        # [gcp] brings Beam's GCS filesystem and the Dataflow runner; crcmod (TFRecord
        # checksums) comes with Beam itself.
        "apache-beam[gcp]>=2.77,<2.78",
        "tensorflow-datasets>=4.9,<5",
        # TFDS resolves a builder's code path with it; it is not among TFDS's own requirements.
        "importlib_resources>=6",
        # TFRecord checksums: pipeline.io.framing reads and writes the framing with it (and
        # Beam's TFRecord IO prefers it to crcmod).
        "google-crc32c>=1.5",
        "google-cloud-storage>=2.14,<4",
        "pillow>=10",
        "pandas>=2",
        # The Parquet table (pipeline.results.table) builds Arrow tables itself; Beam requires
        # it too.
        "pyarrow>=14",
        # Colormaps of the overlays and figures of the report (pipeline.render,
        # pipeline.report) and of the benchmarks; drawn with the Agg backend, no display.
        "matplotlib>=3.8",
        # LIME's and KernelSHAP's superpixels: quickshift (lime's default) and SLIC.
        "scikit-image>=0.22",
        # SpRAy (explain_lib.strategies): kNN graph, k-means and t-SNE, as CoRelAy uses them.
        "scikit-learn>=1.4",
        # explain_lib.strategies fits on one BLAS/OpenMP thread (it comes with scikit-learn).
        "threadpoolctl>=3",
    ],
    extras_require={
        # KerasHub's vision models (ViT, DeiT, Swin, MiT, CSPNet, ...): the job loads
        # .keras files of them once keras_hub is importable (pipeline.worker.explainer).
        "hub": ["keras-hub>=0.32,<0.33"],
        "test": [
            "keras-hub>=0.32,<0.33",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "gcp-storage-emulator>=2024.8",
            # A real SQL client reads the job's Parquet table (tests/pipeline/
            # test_analysis_outputs.py), as the README's queries do.
            "duckdb>=1.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "explain-pipeline=pipeline.__main__:main",
        ],
    },
)
