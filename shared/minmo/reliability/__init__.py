"""Reliability suites: fuzzing every RPC (`fuzz`) and killing components under load (`faults`)."""
