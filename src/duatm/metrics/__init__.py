"""duatm.metrics: CMC / mAP / mINP under the Market-1501 protocol, and their presentation."""

from duatm.metrics.rank import (
    NoValidQueryError,
    RankMetrics,
    RankResult,
    evaluate_rank,
    rank_metrics,
)
from duatm.metrics.report import format_rank_table, rank_metrics_to_dict

__all__ = [
    "NoValidQueryError",
    "RankMetrics",
    "RankResult",
    "evaluate_rank",
    "format_rank_table",
    "rank_metrics",
    "rank_metrics_to_dict",
]
