"""The review report of a discovery run: one self-contained HTML page per run, and an index.

`render_report(run_dir)` (re)writes `run_dir/report.html` from the files a run leaves behind
(docs/outputs.md); `render_index(runs_dir)` writes `runs_dir/index.html`, the equations of
every run in the folder side by side. Pages open offline: figures are embedded PNG images and
equations are MathML, which browsers render natively. Pure library: no Prefect here.
"""

from ._html import render_index, render_report
from ._run import Run, load_run
from ._warnings import Finding, findings

__all__ = ["Finding", "Run", "findings", "load_run", "render_index", "render_report"]
