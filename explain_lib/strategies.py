"""The strategies a model uses for one unit, found across many explanations: Spectral
Relevance Analysis (SpRAy; Lapuschkin et al., 2019, "Unmasking Clever Hans predictors and
assessing what machines really learn", Nature Communications 10, 1096).

SpRAy clusters the explanation maps of one unit (one class): maps that put their mass on the
same places fall together, so a cluster of maps that all sit on a watermark, a frame or a
background patch is a strategy the model uses for part of the class, a shortcut when that
place is not the object. It finds strategies that differ in WHERE the mass lies; it cannot
tell why, nor separate strategies that look at the same place for different reasons, and it
finds only what the method's maps show.

Separation of concerns (each step follows the reference tooling, CoRelAy's
`SpectralClustering` pipeline and its `virelay_analysis` example, where the paper leaves a
choice):

- `reduce_maps`: each map summed over its channels, its absolute value taken, scaled down by
  area averaging to `size` x `size` (CoRelAy's `Pooling`/`Resize`; the paper clusters maps
  of a few thousand pixels at most) and divided by its sum (CoRelAy's `Normalize`: a
  strategy is where the mass lies, not how much there is), flattened.
- `fit_strategies`: on a sample of reduced maps of one unit, a symmetric binary k-nearest-
  neighbour affinity over Euclidean distances (CoRelAy's `SparseKNN`, 10 neighbours), the
  symmetric normalised Laplacian's smallest eigenvalues and eigenvectors (CoRelAy's
  `SymmetricNormalLaplacian` and `EigenDecomposition`, 32 of them, rows normalised to unit
  length), the number of clusters from the largest eigengap among them (the paper's
  eigengap analysis) unless given, and k-means on the first k eigenvectors (the classic
  spectral clustering the paper cites; CoRelAy runs `KMeans` on its eigenvectors).
  Per cluster: its members, its mean reduced map, its prototypes (the members nearest its
  centre); and the spectral coordinates k-means clustered (the first k eigenvectors' rows)
  of the first maps of the sample, `features`, which the job's report lays out in 2-D
  (`pipeline.results.clusters.UnitStrategies.embedding`: t-SNE of the spectral embedding,
  as CoRelAy's `TSNEEmbedding`, of the first k eigenvectors where CoRelAy clusters and
  embeds all 32 alike, so that the plot shows the clusters' own geometry). The layout is
  drawing, not fitting: the fit leaves it to the page, which lays out only the units it
  shows.
- `Strategies.assign`: any map, in or out of the sample, goes to the cluster whose centroid
  (mean reduced map) is nearest in Euclidean distance. That is what lets a job fit on a
  bounded sample and still label every record, with k centroids per unit to hold, not the
  sample; `Strategies.agreement` says how often the rule gives the sample's own members
  their spectral cluster (1.0 when the strategies are blobs apart; less where a cluster is
  not convex in map space).

Usage:

    from explain_lib import strategies

    reduced = strategies.reduce_maps(maps)              # (N, H, W) or (N, H, W, C) -> (N, 1024)
    fitted = strategies.fit_strategies(reduced, ids)    # k from the eigengap
    fitted.k, fitted.sizes, fitted.mean_maps().shape    # (k, 32, 32)
    labels = fitted.assign(strategies.reduce_maps(other_maps))
"""

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SIZE = 32
"""Reduced maps are SIZE x SIZE (1,024 pixels): the paper's "a few thousand at most"."""

NEIGHBORS = 10
"""Neighbours of the k-nearest-neighbour affinity (CoRelAy's `SparseKNN` default)."""

EIGENVALUES = 32
"""Eigenvalues computed, and so the most clusters the eigengap may choose (CoRelAy's
`EigenDecomposition` default)."""

MAX_CLUSTERS = 8
"""The most clusters the eigengap may choose: the gap is looked for among the smallest
eigenvalues only, as the paper reads its spectra (a noisy cluster's own kNN graph has small
eigenvalues too, and its gaps further up the spectrum can be wider than the one after the
strategies)."""

PROTOTYPES = 4
"""Prototypes kept per cluster: the members nearest its centroid."""

EMBEDDING_POINTS = 200
"""At most this many of the sample keep their spectral coordinates (`Strategies.features`)
for a 2-D plot (t-SNE's cost grows faster than the points)."""


def reduce_maps(maps: np.ndarray, size: int = SIZE, dtype=np.float32) -> np.ndarray:
    """Maps (N, H, W) or (N, H, W, C) -> (N, size·size) of `dtype` (float32; the job keeps
    float16): summed over channels, absolute, area-averaged to size x size (a block mean when
    size divides H and W; maps smaller than size are repeated up by nearest neighbour), each
    divided by its sum (a map with no mass stays zero).

    Usage:

        reduce_maps(np.random.rand(8, 224, 224, 1)).shape      # (8, 1024)
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps.sum(axis=-1)
    maps = np.abs(maps)
    n, height, width = maps.shape
    if _repeats(height, width, size) and np.isfinite(maps).all():
        # A side dividing `size`: each output cell lies in one input cell, whose value the
        # area weights (exactly 1 and 0 then) copy: the same numbers as the general path,
        # divided and cast on the H x W cells before they are repeated (elementwise, so the
        # same again), at a fraction of the cost.
        ry, rx = size // height, size // width
        sums = _repeat(maps, ry, rx).reshape(n, size * size).sum(axis=1)[:, None, None]
        scaled = np.divide(maps, sums, out=np.zeros_like(maps), where=sums > 0)
        return _repeat(scaled.astype(dtype, copy=False), ry, rx).reshape(n, size * size)
    reduced = _normalize(_area_resize(maps, size).reshape(n, size * size))
    return reduced.astype(dtype, copy=False)


def _repeat(maps: np.ndarray, ry: int, rx: int) -> np.ndarray:
    return np.repeat(np.repeat(maps, ry, axis=1), rx, axis=2)


@functools.lru_cache(maxsize=None)
def _repeats(height: int, width: int, size: int) -> bool:
    """Whether the area weights from height x width to size x size are a pure repetition
    (each weight exactly 1 or 0): then repeating each cell gives the same numbers."""
    def exact(n):
        return (size % n == 0 and np.array_equal(
            _area_weights(n, size), np.repeat(np.eye(n, dtype=np.float32), size // n, axis=0)))
    return exact(height) and exact(width)


def _area_resize(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size) by area averaging along each axis (an exact block mean
    where size divides the side, fractional overlaps otherwise)."""
    n, height, width = maps.shape
    if height % size == 0 and width % size == 0:  # block means: one reshape, no product
        return maps.reshape(n, size, height // size, size, width // size).mean(axis=(2, 4))
    for axis in (1, 2):
        maps = np.moveaxis(np.tensordot(maps, _area_weights(maps.shape[axis], size),
                                        axes=([axis], [1])), -1, axis)
    return maps


def _area_weights(n: int, size: int) -> np.ndarray:
    """(size, n): row i averages the input cells overlapping output cell i's span."""
    edges = np.linspace(0.0, n, size + 1)
    cells = np.arange(n)
    overlap = (np.minimum(edges[1:, None], cells[None, :] + 1)
               - np.maximum(edges[:-1, None], cells[None, :]))
    weights = np.clip(overlap, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _normalize(flat: np.ndarray) -> np.ndarray:
    sums = flat.sum(axis=1, keepdims=True)
    return np.divide(flat, sums, out=np.zeros_like(flat), where=sums > 0)


@dataclass
class Strategies:
    """The strategies of one unit fitted on a sample of its reduced maps.

    `labels` (n,) the sample's clusters; `centroids` (k, D) each cluster's mean reduced map;
    `sizes` (k,) members in the sample; `prototypes` (k, P) sample indices of the members
    nearest each centroid (-1 where a cluster has fewer); `eigenvalues` (the Laplacian's
    smallest, ascending); `features` (m, c) the spectral coordinates k-means clustered of
    the first m sampled maps (c = max(k, 2); rows of unit length), what a 2-D plot lays out;
    `agreement` the share of the sample the nearest-centroid rule gives its own cluster."""

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    prototypes: np.ndarray
    eigenvalues: np.ndarray
    features: np.ndarray
    agreement: float
    ids: Optional[Sequence[str]] = None

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def size(self) -> int:
        """The side of the reduced maps."""
        return int(round(np.sqrt(self.centroids.shape[1])))

    def mean_maps(self) -> np.ndarray:
        """(k, size, size): each cluster's mean reduced map."""
        return self.centroids.reshape(self.k, self.size, self.size)

    def prototype_ids(self) -> list:
        """Per cluster, the ids of its prototypes (sample indices without `ids`)."""
        names = self.ids if self.ids is not None else range(len(self.labels))
        return [[names[i] for i in row if i >= 0] for row in self.prototypes]

    def assign(self, reduced: np.ndarray) -> np.ndarray:
        """(N, D) reduced maps -> (N,) int32: the cluster with the nearest centroid."""
        return nearest_centroid(reduced, self.centroids)


def nearest_centroid(reduced: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, D), (k, D) -> (N,) int32: each row's nearest centroid (Euclidean; ties to the
    smaller index)."""
    reduced = np.asarray(reduced, np.float32)
    centroids = np.asarray(centroids, np.float32)
    distances = ((reduced * reduced).sum(1)[:, None] - 2.0 * reduced @ centroids.T
                 + (centroids * centroids).sum(1)[None, :])
    return distances.argmin(axis=1).astype(np.int32)


def knn_affinity(reduced: np.ndarray, neighbors: int = NEIGHBORS):
    """The symmetric binary k-nearest-neighbour affinity of the rows of `reduced` (CoRelAy's
    `SparseKNN`: 1 for each of a row's `neighbors` nearest other rows, then (A + Aᵀ) / 2), as
    a scipy CSR matrix."""
    import scipy.sparse
    from sklearn.neighbors import NearestNeighbors

    n = len(reduced)
    neighbors = min(neighbors, n - 1)
    # One more than asked: each row is its own nearest neighbour, dropped as CoRelAy does.
    _, columns = NearestNeighbors(n_neighbors=neighbors + 1).fit(reduced).kneighbors(reduced)
    rows = np.repeat(np.arange(n), neighbors)
    columns = np.array([[c for c in row if c != i][:neighbors]
                        for i, row in enumerate(columns)]).reshape(-1)
    affinity = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(n, n))
    return (affinity + affinity.T) / 2.0


def spectral_embedding(affinity, n_eigenvalues: int = EIGENVALUES, seed: int = 0):
    """(eigenvalues ascending, eigenvectors (n, m) rows normalised to unit length) of the
    symmetric normalised Laplacian I - D^-1/2 A D^-1/2, its m smallest (CoRelAy computes the
    largest of D^-1/2 A D^-1/2 and returns one minus them; the largest algebraic ones are
    asked for here, the smallest of the Laplacian, so that a bipartite part cannot bring
    eigenvalues near -1 in)."""
    import scipy.sparse
    import scipy.sparse.linalg

    n = affinity.shape[0]
    m = min(n_eigenvalues, n - 1)
    degree = np.asarray(affinity.sum(axis=1)).reshape(-1)
    inverse_root = scipy.sparse.diags(np.where(degree > 0, degree, 1.0) ** -0.5)
    normalized = inverse_root @ affinity @ inverse_root
    if n <= 600:
        values, vectors = np.linalg.eigh(normalized.toarray())
        values, vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    else:
        start = np.random.default_rng(seed).uniform(size=n)
        values, vectors = scipy.sparse.linalg.eigsh(normalized, k=m, which="LA", v0=start)
        order = np.argsort(-values)
        values, vectors = values[order], vectors[:, order]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - values, 0.0, None), vectors


def eigengap(eigenvalues: np.ndarray, max_clusters: Optional[int] = None) -> int:
    """The number of clusters k at the largest gap λ(k+1) - λ(k) among the Laplacian's
    smallest eigenvalues (ascending; von Luxburg 2007, the paper's eigengap analysis), at
    most `max_clusters` (default: all but the last)."""
    eigenvalues = np.asarray(eigenvalues, np.float64)
    limit = len(eigenvalues) - 1 if max_clusters is None else min(max_clusters,
                                                                   len(eigenvalues) - 1)
    gaps = np.diff(eigenvalues[:limit + 1])
    return int(np.argmax(gaps)) + 1 if len(gaps) else 1


def fit_strategies(reduced: np.ndarray, ids: Optional[Sequence[str]] = None, *,
                   clusters: int = 0, max_clusters: int = MAX_CLUSTERS,
                   neighbors: int = NEIGHBORS,
                   n_eigenvalues: int = EIGENVALUES, prototypes: int = PROTOTYPES,
                   embedding_points: int = EMBEDDING_POINTS, seed: int = 0) -> Strategies:
    """Cluster the reduced maps (N, D) of one unit (`reduce_maps`) into strategies (SpRAy):
    kNN affinity -> spectral embedding -> k from the eigengap among the first
    `max_clusters` + 1 eigenvalues (or `clusters` when > 0) ->
    k-means (10 restarts, `seed`) on the first k eigenvectors. Fewer than 3 maps make one
    cluster. See the module's docstring for each step and its source.

    Usage:

        fitted = fit_strategies(reduce_maps(maps), ids=record_ids)
        fitted.k, fitted.sizes, fitted.prototype_ids()
    """
    from threadpoolctl import threadpool_limits

    # One thread for BLAS and OpenMP: the job fits its units side by side next to
    # TensorFlow's own pools, and on a busy machine OpenMP's spinning threads made t-SNE and
    # k-means 10 to 70 times slower than on one thread (benchmarks/RESULTS.md).
    with threadpool_limits(1):
        return _fit(reduced, ids, clusters, max_clusters, neighbors, n_eigenvalues,
                    prototypes, embedding_points, seed)


def _fit(reduced, ids, clusters, max_clusters, neighbors, n_eigenvalues, prototypes,
         embedding_points, seed) -> Strategies:
    # scikit-learn and scipy load on the first fit, not on import: the job's workers reduce
    # maps with this module and never fit.
    from sklearn.cluster import KMeans

    reduced = np.asarray(reduced, np.float32)
    n = len(reduced)
    if n < 3:
        labels = np.zeros(n, np.int32)
        eigenvalues = np.zeros(max(n, 1))
        features = np.zeros((n, 2))
    else:
        eigenvalues, vectors = spectral_embedding(knn_affinity(reduced, neighbors),
                                                  n_eigenvalues, seed)
        k = clusters if clusters > 0 else eigengap(eigenvalues, max_clusters)
        k = max(1, min(k, n - 1))
        features = vectors[:, :max(k, 2)]
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True),
                                          1e-12)
        if k == 1:
            labels = np.zeros(n, np.int32)
        else:
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    labels = _by_size(np.asarray(labels, np.int32))
    k = int(labels.max()) + 1 if n else 1
    centroids = np.stack([reduced[labels == c].mean(axis=0) if np.any(labels == c)
                          else np.zeros(reduced.shape[1], np.float32) for c in range(k)])
    sizes = np.bincount(labels, minlength=k)
    nearest = np.full((k, prototypes), -1, np.int64)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        distances = ((reduced[members] - centroids[c]) ** 2).sum(axis=1)
        chosen = members[np.argsort(distances, kind="stable")[:prototypes]]
        nearest[c, :len(chosen)] = chosen
    m = min(n, embedding_points)
    agreement = float(np.mean(nearest_centroid(reduced, centroids) == labels)) if n else 1.0
    return Strategies(labels, centroids.astype(np.float32), sizes.astype(np.int64), nearest,
                      np.asarray(eigenvalues, np.float32), features[:m].astype(np.float32),
                      agreement, list(ids) if ids is not None else None)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters largest first (ties: the smaller old label), so that cluster 0 is
    the unit's main strategy whatever k-means numbered it."""
    if not len(labels):
        return labels
    counts = np.bincount(labels)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    order = [c for c in order if counts[c] > 0]
    mapping = np.zeros(len(counts), np.int32)
    mapping[order] = np.arange(len(order))
    return mapping[labels]


__all__ = ["EIGENVALUES", "NEIGHBORS", "PROTOTYPES", "SIZE", "Strategies", "eigengap",
           "fit_strategies", "knn_affinity", "nearest_centroid", "reduce_maps",
           "spectral_embedding"]
