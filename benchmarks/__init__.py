"""Benchmarks: each module's ``run(report)`` measures ours against a baseline taken
in the same run, and reports the ratio; ``python -m benchmarks`` runs them all."""
