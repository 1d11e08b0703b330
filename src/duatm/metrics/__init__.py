"""duatm.metrics: CMC / mAP / mINP under the Market-1501 protocol, and their presentation."""

from duatm.metrics.rank import (
    NoValidQueryError,
    RankMetrics,
    RankResult,
    SkippedQueries,
    check_valid_queries,
    count_valid_queries,
    evaluate_rank,
    rank_metrics,
)
from duatm.metrics.report import (
    format_rank_report,
    format_rank_table,
    protocol_notes,
    rank_metrics_to_dict,
)

__all__ = [
    "NoValidQueryError",
    "RankMetrics",
    "RankResult",
    "SkippedQueries",
    "check_valid_queries",
    "count_valid_queries",
    "evaluate_rank",
    "format_rank_report",
    "format_rank_table",
    "protocol_notes",
    "rank_metrics",
    "rank_metrics_to_dict",
]
