"""Benchmarks as per-task datasets: the rendered toy benchmark, real dataset folders, multi-task batching."""
