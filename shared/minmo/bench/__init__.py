"""Benchmarks that print numbers (`minmo bench ...`); targets are checked here, not in unit tests."""
