"""Row operations over the `[n, d]` update matrix, shared by aggregators, attacks and analysis.

Every function is pure, jit/vmap/grad-safe and accepts traced counts, ranks and masks. Four
modules:

* `blocks`: walking the columns in cache-sized blocks (`scan_columns`, one compensated scan).
* `stats`: weighted row sums and masked means as matrix products (`w @ X`: XLA:CPU reduces over
  the client axis at a fraction of bandwidth otherwise), one-pass column statistics
  (`column_stats`: centre, std, direction, centred Gram).
* `distances`: the centred (and uncentred) Gram matrix, the one Gram-to-distance conversion, cosines,
  distances to a centre, row norms.
* `order`: ranks and selection masks, order statistics along the client axis (sorting network,
  radix selection or `jnp.sort`), Bulyan's median window.

How they run on a platform is a static `Backend` value (`ops.Backend(sort="radix")`), passed
explicitly; None means the platform's default, `Backend()`. Stages resolve it once when built.
"""

from strike_jax.ops.backend import GRAM_MODES, SORT_METHODS, Backend, resolve
from strike_jax.ops.blocks import column_chunk, finite_rows, scan_columns
from strike_jax.ops.distances import (
    centred_gram,
    cosine_from_gram,
    gram,
    masked_max_pairwise,
    pairwise_sq_dists,
    pairwise_sq_dists_finite,
    safe_sqrt,
    sq_dists_from_gram,
    sq_dists_to,
    sq_norms,
    sq_norms_and_dots,
)
from strike_jax.ops.order import (  # the two private names: the sorting network's tests
    _batcher_pairs,  # noqa: F401 (re-exported for the sorting network's tests)
    _pruned_network,  # noqa: F401 (likewise)
    largest_k_mask,
    lower_median,
    masked_lower_median,
    median_window_mean,
    network_masked_lower_median,
    order_statistic,
    rank_band_mean,
    rank_band_sum,
    smallest_k_mask,
    smallest_k_mask_rows,
    sort_method,
    stable_ranks,
    stable_ranks_rows,
)
from strike_jax.ops.stats import (
    ColumnStats,
    centred_matvec,
    column_stats,
    masked_mean,
    masked_mean_safe,
    mean_weights,
    weighted_rows,
    weighted_rows_safe,
)

__all__ = [
    "Backend",
    "ColumnStats",
    "GRAM_MODES",
    "SORT_METHODS",
    "centred_gram",
    "centred_matvec",
    "column_chunk",
    "column_stats",
    "cosine_from_gram",
    "finite_rows",
    "gram",
    "largest_k_mask",
    "lower_median",
    "masked_lower_median",
    "network_masked_lower_median",
    "masked_max_pairwise",
    "masked_mean",
    "masked_mean_safe",
    "mean_weights",
    "median_window_mean",
    "order_statistic",
    "pairwise_sq_dists",
    "pairwise_sq_dists_finite",
    "rank_band_mean",
    "rank_band_sum",
    "resolve",
    "safe_sqrt",
    "scan_columns",
    "smallest_k_mask",
    "smallest_k_mask_rows",
    "sort_method",
    "sq_dists_from_gram",
    "sq_dists_to",
    "sq_norms",
    "sq_norms_and_dots",
    "stable_ranks",
    "stable_ranks_rows",
    "weighted_rows",
    "weighted_rows_safe",
]
