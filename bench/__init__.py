"""Benchmarks (`make bench`): each side by side with its peers, in one run, written to BENCHMARKS.md."""
