"""LongBench v1 (Bai et al. 2023): prompts, generation, metrics and reports.

The benchmark's own prompt templates and generation lengths are shipped in `config/`
(MIT licence, see `config/NOTICE`); the code here is the project's own.
"""

from pathlib import Path

METRIC_PATH = str(Path(__file__).with_name("metric.py"))
"""`evaluate.load(METRIC_PATH, "hotpotqa")` loads the LongBench metric offline."""
