"""Large-entry finders: how a call chooses the keys each query attends exactly.

A finder is chosen once per call (`finder_of_call`, from the config). Block finders
(`LshBlocks`, `KmeansBlocks`) give every query and key a bucket rank, and a query attends
the block of sorted keys beside it; they meet the executors (the torch path and the
fused kernels) through `planning.BlockFinder`. `QueryClusters` chooses each query's own
clusters and runs their exact and sampled parts itself. Each finder's torch ops and its
kernels' launchers share one file; the Triton kernels are in `kernels/`.
"""

from .choice import Finder, finder_of_call
from .kmeans import KmeansBlocks
from .lsh import LshBlocks, angular_lsh_rank, gray_code_rank
from .query_clusters import QueryClusters

__all__ = [
    "Finder",
    "KmeansBlocks",
    "LshBlocks",
    "QueryClusters",
    "angular_lsh_rank",
    "finder_of_call",
    "gray_code_rank",
]
