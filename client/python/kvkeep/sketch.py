"""Query sketches (LayerStats.sketch, for the qsketch / qsketch-post scorers), in numpy.

Per (layer, query head) the queries a sequence has seen, summarised as up to K weighted centroids:
k-means++ seeding and a few Lloyd steps over a block of queries, then each later query folded into
its nearest centroid (running mean, weight + 1; a new centroid while fewer than K). The same
algorithm and generator (splitmix64) as the C++ clients and the daemon (common/query_sketch.cc), so
a sketch is deterministic under its seed; query head h is seeded with `seed + h`.

    sketch = QuerySketch.build(layer=0, queries=q, first_position=0)   # q: [q_heads, n, head_dim]
    seq.commit(n, stats=[sketch.layer_stats()])
    sketch.fold(next_q, position=n)                                    # next_q: [q_heads, head_dim]
    seq.put_stats([sketch.layer_stats()])

Queries are pre-RoPE by default (post_rope=False): the daemon rotates the centroids to the future
positions it scores from, and un-rotates the window queries it receives before folding them in.
"""

import numpy as np

from kvkeep._proto import common_pb2

MAX_K = 256  # the daemon's bound on QuerySketch.k
_MASK = (1 << 64) - 1


class _SplitMix64:
    """splitmix64, bit for bit as common/query_sketch.cc."""

    def __init__(self, seed):
        self.state = int(seed) & _MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * 2.0 ** -53


def _sq_dist(x, c):
    """Squared distances [n, m] between rows of x [n, d] and c [m, d], in float64."""
    diff = x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None, :, :]
    return np.einsum("nmd,nmd->nm", diff, diff)


def _seed_indices(q, k, rng):
    n = q.shape[0]
    seeds = [rng.next() % n]
    nearest = _sq_dist(q, q[seeds[0]][None, :])[:, 0]
    while len(seeds) < k:
        total = float(nearest.sum())
        if not total > 0:
            break
        target = rng.uniform() * total
        below = (target - np.cumsum(nearest) < 0) & (nearest > 0)
        pick = int(np.argmax(below)) if below.any() else n - 1
        if nearest[pick] <= 0:
            break
        seeds.append(pick)
        nearest = np.minimum(nearest, _sq_dist(q, q[pick][None, :])[:, 0])
    return seeds


def build_head_sketch(queries, k=32, iterations=6, seed=0):
    """(centroids [m, d] float32, weights [m] float32) of queries [n, d], m <= k, weights sum n."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be [n, head_dim], got {q.shape}")
    if k < 1 or iterations < 0:
        raise ValueError("k must be >= 1 and iterations >= 0")
    if not np.isfinite(q).all():
        raise ValueError("queries hold a non-finite value")
    n, d = q.shape
    if n == 0:
        return np.zeros((0, d), np.float32), np.zeros(0, np.float32)
    if n <= k:
        return q.copy(), np.ones(n, np.float32)
    centroids = q[_seed_indices(q, k, _SplitMix64(seed))].copy()
    for _ in range(iterations):
        owner = np.argmin(_sq_dist(q, centroids), axis=1)
        counts = np.bincount(owner, minlength=len(centroids))
        sums = np.zeros((len(centroids), d), np.float64)
        np.add.at(sums, owner, q.astype(np.float64))
        live = counts > 0
        centroids = (sums[live] / counts[live][:, None]).astype(np.float32)
    owner = np.argmin(_sq_dist(q, centroids), axis=1)
    counts = np.bincount(owner, minlength=len(centroids))
    live = counts > 0
    return centroids[live].copy(), counts[live].astype(np.float32)


def fold_query(centroids, weights, query, max_k):
    """Folds one query [d] in: a new centroid while fewer than max_k, else the nearest moves to the
    running mean and its weight grows by 1. Returns the new (centroids, weights)."""
    query = np.asarray(query, dtype=np.float32)
    if len(weights) < max_k:
        return (np.concatenate([centroids, query[None, :]]).astype(np.float32),
                np.append(weights, np.float32(1)).astype(np.float32))
    j = int(np.argmin(_sq_dist(query[None, :], centroids)[0]))
    centroids = centroids.copy()
    weights = weights.copy()
    w = np.float32(weights[j] + np.float32(1))
    centroids[j] = centroids[j] + (query - centroids[j]) / w
    weights[j] = w
    return centroids, weights


class QuerySketch:
    """The sketch of one layer, every query head; kept current by fold() while decoding."""

    def __init__(self, layer, heads, k, first_position, last_position, query_count,
                 post_rope=False):
        self.layer = int(layer)
        self.heads = heads  # list of (centroids [m, d], weights [m])
        self.k = int(k)
        self.first_position = int(first_position)
        self.last_position = int(last_position)
        self.query_count = int(query_count)
        self.post_rope = bool(post_rope)

    @classmethod
    def build(cls, layer, queries, first_position=0, k=32, iterations=6, seed=0, post_rope=False):
        """From queries [q_heads, n, head_dim] of positions first_position .. + n - 1."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 3 or q.shape[1] == 0:
            raise ValueError(f"queries must be [q_heads, n >= 1, head_dim], got {q.shape}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k = {k} is outside 1..{MAX_K}")
        heads = [build_head_sketch(q[h], k, iterations, seed + h) for h in range(q.shape[0])]
        n = q.shape[1]
        return cls(layer, heads, k, first_position, first_position + n - 1, n, post_rope)

    @property
    def head_dim(self):
        return self.heads[0][0].shape[1]

    def fold(self, queries, position):
        """Folds one query per head ([q_heads, head_dim]) at `position` (after last_position)."""
        q = np.asarray(queries, dtype=np.float32)
        if q.shape != (len(self.heads), self.head_dim):
            raise ValueError(f"queries must be [{len(self.heads)}, {self.head_dim}], got {q.shape}")
        if position <= self.last_position:
            raise ValueError(f"position {position} is not after the sketch's last position "
                             f"{self.last_position}")
        if not np.isfinite(q).all():
            raise ValueError("queries hold a non-finite value")
        self.heads = [fold_query(c, w, q[h], self.k) for h, (c, w) in enumerate(self.heads)]
        self.last_position = int(position)
        self.query_count += 1

    def to_proto(self):
        msg = common_pb2.QuerySketch(post_rope=self.post_rope, k=self.k, head_dim=self.head_dim,
                                     first_position=self.first_position,
                                     last_position=self.last_position,
                                     query_count=self.query_count)
        for centroids, weights in self.heads:
            msg.head_counts.append(len(weights))
            msg.centroids.extend(np.ascontiguousarray(centroids, np.float32).ravel().tolist())
            msg.weights.extend(np.asarray(weights, np.float32).tolist())
        return msg

    def layer_stats(self):
        """A LayerStats carrying only this sketch (merge other statistics into it if needed)."""
        return common_pb2.LayerStats(layer=self.layer, sketch=self.to_proto())
