"""The training recipe (paper §4): synthetic data, the four alignment stages, and the evaluation that judges them.

- `minmo data build`: speech→text data from TTS voices, sharded and resumable (data.py, voices.py, texts.py).
- `minmo train stage1`: speech→text alignment, the paper's freezing schedule (stage1.py).
- `minmo eval asr|qa`: scores judged on audio, with faster-whisper as the reference (evaluate.py).
"""
