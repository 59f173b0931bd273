"""Reports from probe results: markdown tables, the paper's figures, attention maps."""

from epcache.report._attention import attention_report as attention_report
from epcache.report._compare import Comparison as Comparison
from epcache.report._compare import report_runs as report_runs
from epcache.report._report import Report as Report
from epcache.report._report import write_report as write_report
from epcache.report._tables import ConfigGroup as ConfigGroup
from epcache.report._tables import group_seeds as group_seeds
from epcache.report._tables import load_rows as load_rows

__all__ = ["Comparison", "ConfigGroup", "Report", "attention_report", "group_seeds", "load_rows", "report_runs",
           "write_report"]
