"""What the overview and the manifest keep of each unit's strategies (SpRAy; the job's
`--strategies`, `pipeline.results.strategies`): numpy only, so that the report reads them
without Beam or TensorFlow.

Usage:

    unit = read_overview("out/expl").strategies[3]
    unit.k, unit.records, unit.shares(), unit.mean_maps.shape      # (k, s, s)
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

ARRAYS = ("eigenvalues", "mean_maps", "prototype_maps", "prototype_images", "embedding",
          "embedding_clusters")
"""The arrays of a `UnitStrategies`, stored as such in the overview's `.npz`."""


@dataclass
class UnitStrategies:
    """The strategies of one unit: `k`, the Laplacian's smallest `eigenvalues`, per cluster
    the `records` assigned to it (all records; `sample_sizes` in the sample), its mean
    reduced map (`mean_maps` (k, s, s)), its `prototypes` (ids), their reduced maps
    (`prototype_maps` (k, P, s, s)) and thumbnails (`prototype_images` (k, P, h, w, C) uint8,
    empty ids where a cluster has fewer), the sample's 2-D `embedding` (m, 2) and its
    `embedding_clusters` (m,), `sample` (maps fitted) and `agreement` (share of the sample
    that the nearest-centroid rule gives its own cluster)."""

    unit: int
    k: int
    sample: int
    eigenvalues: np.ndarray
    sample_sizes: List[int]
    mean_maps: np.ndarray
    prototypes: List[List[str]]
    prototype_maps: np.ndarray
    prototype_images: np.ndarray
    embedding: np.ndarray
    embedding_clusters: np.ndarray
    agreement: float
    records: List[int] = field(default_factory=list)

    def shares(self) -> List[float]:
        """Each cluster's share of the unit's assigned records."""
        total = sum(self.records)
        return [count / total if total else 0.0 for count in self.records]

    def summary(self) -> Dict[str, Any]:
        """The manifest's JSON of this unit."""
        return {"k": self.k, "sample": self.sample, "records": list(self.records),
                "shares": [round(s, 6) for s in self.shares()],
                "sample_sizes": list(self.sample_sizes), "prototypes": self.prototypes,
                "eigenvalues": [round(float(v), 6) for v in self.eigenvalues],
                "agreement": round(self.agreement, 6)}


    def to_arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        """Its arrays, keyed `prefix/NAME`."""
        return {f"{prefix}/{name}": np.asarray(getattr(self, name)) for name in ARRAYS}

    @classmethod
    def from_parts(cls, unit: int, meta: Dict[str, Any], arrays: Dict[str, np.ndarray],
                   prefix: str) -> "UnitStrategies":
        """The inverse of `summary` and `to_arrays`; raises KeyError or ValueError when they
        do not fit."""
        parts = {name: arrays[f"{prefix}/{name}"] for name in ARRAYS}
        k = int(meta["k"])
        if parts["mean_maps"].shape[0] != k or len(meta["records"]) != k:
            raise ValueError(f"unit {unit}: {k} clusters, and arrays of another count")
        return cls(unit=unit, k=k, sample=int(meta["sample"]),
                   sample_sizes=[int(v) for v in meta["sample_sizes"]],
                   prototypes=[[str(i) for i in row] for row in meta["prototypes"]],
                   agreement=float(meta["agreement"]),
                   records=[int(v) for v in meta["records"]], **parts)


__all__ = ["ARRAYS", "UnitStrategies"]
