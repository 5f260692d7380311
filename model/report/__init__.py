"""The run report: one self-contained HTML page (and markdown) with figures and metrics."""

from hyperkd.model.report.page import ReportConfig, write_report

__all__ = ["ReportConfig", "write_report"]
