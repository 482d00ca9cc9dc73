"""Latency benchmarks: per-stage timings, peers on the same weights, FLOPs against the peak."""
