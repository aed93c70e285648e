"""Benchmarks: load, long sessions, partials, diarization (run as ``python -m benchmarks.<name>``)."""
