"""nndoctor: a doctor for PyTorch training.

collect (hooks) -> record (history) -> judge (rules) -> show (report) -> repair.
"""
from .diagnose import diagnose
from .findings import Finding, Report
from .watch import Doctor, watch

__all__ = ["diagnose", "watch", "Doctor", "Finding", "Report"]
__version__ = "0.1.0"
