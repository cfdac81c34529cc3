"""MinMo: a full-duplex speech-text LLM (arXiv 2501.06282) and the gRPC serving system around it."""

__version__ = "0.1.0"
