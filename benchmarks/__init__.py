"""Benchmark scripts (each prints RESULT lines; see benchmarks/RESULTS.md); importable so that
tests can reuse a benchmark's measuring code (the sandbox soak)."""
