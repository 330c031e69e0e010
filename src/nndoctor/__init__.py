"""nndoctor: a doctor for PyTorch training.

collect (hooks) -> record (history) -> judge (rules) -> show (report) -> repair.
"""
from .preflight import checkup
from .diagnosis import diagnose
from .findings import Finding, Report
from .live import DoomedRun
from .watcher import Doctor, watch
from .repair import find_lr, repair  # after the modules it builds on
from . import analysis  # deep analysis: analysis.examine(report, model, ...), diagnose(deep=True)

__all__ = ["checkup", "diagnose", "watch", "Doctor", "DoomedRun", "Finding", "Report", "repair", "find_lr",
           "analysis"]
__version__ = "0.1.0"
