"""duatm.metrics: CMC / mAP / mINP under the Market-1501 protocol, their presentation, and
k-reciprocal re-ranking of distance matrices."""

from duatm.metrics.rank import (
    NoValidQueryError,
    QueryRanks,
    RankMetrics,
    RankResult,
    SkippedQueries,
    check_valid_queries,
    count_valid_queries,
    evaluate_rank,
    per_query_ranks,
    rank_metrics,
)
from duatm.metrics.report import (
    format_rank_report,
    format_rank_table,
    protocol_notes,
    rank_metrics_to_dict,
)
from duatm.metrics.rerank import re_ranking

__all__ = [
    "NoValidQueryError",
    "QueryRanks",
    "RankMetrics",
    "RankResult",
    "SkippedQueries",
    "check_valid_queries",
    "count_valid_queries",
    "evaluate_rank",
    "format_rank_report",
    "format_rank_table",
    "per_query_ranks",
    "protocol_notes",
    "rank_metrics",
    "rank_metrics_to_dict",
    "re_ranking",
]
