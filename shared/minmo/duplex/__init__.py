"""The duplex conductor: per-session state machine, audio input path, response pipeline, latency."""
