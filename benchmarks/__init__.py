"""rdsproxy benchmarks: run with `pytest benchmarks/` (not part of `make test`)."""
