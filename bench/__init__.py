"""pushtwisted load generator and benchmark runner.

``python -m bench run --backend memory --scenario all --tiny`` starts a server,
drives it over loopback, and writes one JSON result per run under
``bench/results/``.  See ``bench/README.md``.
"""

__all__ = ["SCHEMA"]

#: Version tag written into every result file.
SCHEMA = "pushtwisted-bench/1"
