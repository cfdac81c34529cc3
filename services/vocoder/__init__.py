"""vocoder service."""
