"""The benchmarking harness: suites, tasks, the training loop, measurements, Optuna search, run storage."""
