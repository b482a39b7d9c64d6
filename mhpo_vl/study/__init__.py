"""`mhpo-vl study`: a controlled comparison of losses x seeds x settings, each an ordinary training run in
``<out>/<setting>/<loss>/seed<k>/``, then ``summary.md`` / ``summary.json`` / figures (docs/study.md).

plan.py (what runs, with which overrides), runner.py (one run after another, resumable), aggregate.py (numbers over
seeds), figures.py, report.py (the written summary).
"""
