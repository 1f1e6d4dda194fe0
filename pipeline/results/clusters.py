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

ARRAYS = ("eigenvalues", "mean_maps", "prototype_maps", "prototype_images", "features",
          "feature_clusters")
"""The arrays of a `UnitStrategies`, stored as such in the overview's `.npz`."""


@dataclass
class UnitStrategies:
    """The strategies of one unit: `k`, the Laplacian's smallest `eigenvalues`, per cluster
    the `records` assigned to it (all records; `sample_sizes` in the sample), its mean
    reduced map (`mean_maps` (k, s, s)), its `prototypes` (ids), their reduced maps
    (`prototype_maps` (k, P, s, s)) and thumbnails (`prototype_images` (k, P, h, w, C) uint8,
    empty ids where a cluster has fewer), the spectral coordinates of the first m sampled
    maps, `features` (m, c; `explain_lib.strategies.Strategies.features`) and their
    clusters, `feature_clusters` (m,), which `embedding` lays out in 2-D for the page,
    `sample` (maps fitted) and `agreement` (share of the sample that the nearest-centroid
    rule gives its own cluster)."""

    unit: int
    k: int
    sample: int
    eigenvalues: np.ndarray
    sample_sizes: List[int]
    mean_maps: np.ndarray
    prototypes: List[List[str]]
    prototype_maps: np.ndarray
    prototype_images: np.ndarray
    features: np.ndarray
    feature_clusters: np.ndarray
    agreement: float
    records: List[int] = field(default_factory=list)

    def shares(self) -> List[float]:
        """Each cluster's share of the unit's assigned records."""
        total = sum(self.records)
        return [count / total if total else 0.0 for count in self.records]

    def embedding(self, seed: int = 0) -> np.ndarray:
        """(m, 2): the sampled maps laid out in 2-D, t-SNE of their spectral coordinates
        (as CoRelAy's `TSNEEmbedding`; perplexity 30 or a third of the points, PCA start,
        500 iterations), for the report's plot: computed when drawn, not by the job (a
        fraction of a second per unit, for the units the page shows). Fewer than 5 points,
        or points all at one place, stay at the origin."""
        from sklearn.manifold import TSNE

        points = np.asarray(self.features, np.float64)
        m = len(points)
        # Points all at one place (the plotted maps all in one component of a disconnected
        # graph, whose rows the eigenvectors make equal) have no embedding but that place,
        # and t-SNE's PCA start divides by their zero spread: its Barnes-Hut tree then
        # crashed the process (a segmentation fault).
        if m < 5 or not np.ptp(points, axis=0).max() > 0:
            return np.zeros((m, 2), np.float32)
        return TSNE(n_components=2, perplexity=min(30.0, (m - 1) / 3.0), init="pca",
                    max_iter=500, random_state=seed).fit_transform(points).astype(np.float32)

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
