"""duatm.report: one self-contained HTML page about a trained model on a query/gallery split:
metrics, CMC curve, ranked lists and the attention maps of query-gallery pairs."""

from duatm.report.build import build_report
from duatm.report.page import ReportContent, render_report

__all__ = ["ReportContent", "build_report", "render_report"]
