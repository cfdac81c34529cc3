"""Audio at the service edge: PCM16 conversion, resampling, Silero VAD, VAD endpointing.

Submodules are imported directly (`from minmo.audio.vad import SileroVad`) so that code needing only
PCM helpers or the endpointing policy does not pay for importing torch.
"""
