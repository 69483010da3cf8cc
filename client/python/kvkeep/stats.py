"""Query statistics (LayerStats) from numpy arrays. Shapes use the model's q_heads and head_dim:

- window_queries: [q_heads, window, head_dim], post-RoPE queries of the last `window` committed
  positions (SnapKV, TOVA, LaProx); they replace the stored window.
- query_sum / query_sq_sum: [q_heads, head_dim], sums of pre-RoPE queries (sinks excluded) over
  `query_count` queries (CapKV, Expected Attention); they accumulate.
- attention_mass: [q_heads, tokens] (or a list of q_heads 1-D arrays when the heads of the layer
  hold different token counts), attention each cached key received, in slot order (H2O); it
  replaces the stored mass.
- sketch: a kvkeep.sketch.QuerySketch (or a QuerySketch message) of the layer's queries (qsketch,
  qsketch-post); it replaces the stored sketch.
"""

import numpy as np

from kvkeep._proto import common_pb2


def _floats(array, dtype):
    return np.ascontiguousarray(array, dtype=dtype).ravel().tolist()


def layer_stats(layer, window_queries=None, query_sum=None, query_count=None, query_sq_sum=None,
                attention_mass=None, sketch=None):
    """A LayerStats message for `layer` from numpy arrays (every statistic optional)."""
    stats = common_pb2.LayerStats(layer=int(layer))
    if sketch is not None:
        stats.sketch.CopyFrom(sketch if isinstance(sketch, common_pb2.QuerySketch)
                              else sketch.to_proto())
    if window_queries is not None:
        wq = np.asarray(window_queries, dtype=np.float32)
        if wq.ndim != 3:
            raise ValueError(f"window_queries must be [q_heads, window, head_dim], got {wq.shape}")
        stats.window = wq.shape[1]
        stats.window_queries.extend(_floats(wq, np.float32))
    if query_sum is not None:
        if query_count is None:
            raise ValueError("query_sum needs query_count")
        stats.query_sum.extend(_floats(query_sum, np.float64))
        stats.query_count = int(query_count)
        if query_sq_sum is not None:
            stats.query_sq_sum.extend(_floats(query_sq_sum, np.float64))
    elif query_sq_sum is not None:
        raise ValueError("query_sq_sum needs query_sum")
    if attention_mass is not None:
        if isinstance(attention_mass, np.ndarray):
            stats.attention_mass.extend(_floats(attention_mass, np.float32))
        else:
            for row in attention_mass:
                stats.attention_mass.extend(_floats(row, np.float32))
    return stats


def as_layer_stats(item):
    """Accepts a LayerStats message or a dict of layer_stats() arguments."""
    if isinstance(item, common_pb2.LayerStats):
        return item
    if isinstance(item, dict):
        return layer_stats(**item)
    raise TypeError(f"expected LayerStats or dict, got {type(item).__name__}")


def stats_per_layer(layers, window_queries=None, query_sum=None, query_count=None,
                    query_sq_sum=None, attention_mass=None, layer_ids=None):
    """One LayerStats per layer from arrays with a leading layer axis."""
    ids = list(range(layers)) if layer_ids is None else list(layer_ids)
    out = []
    for i, layer in enumerate(ids):
        def pick(a):
            return None if a is None else a[i]
        count = query_count
        if count is not None and not np.isscalar(count):
            count = count[i]
        out.append(layer_stats(layer, pick(window_queries), pick(query_sum), count,
                               pick(query_sq_sum), pick(attention_mass)))
    return out
