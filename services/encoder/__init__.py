"""encoder: 16 kHz PCM -> LLM-ready embeddings at 12.5 Hz (fbank, voice encoder, input projector)."""
