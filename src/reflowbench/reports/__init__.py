"""Reports: markdown/HTML pages, tables and matplotlib figures made from a results folder."""

from reflowbench.reports.report import write_report

__all__ = ["write_report"]
