"""DNSMOS P.835 (Reddy et al., ICASSP 2022): a non-intrusive judge of how a listener would rate speech (1-5) for
the speech itself (SIG), the background (BAK) and overall (OVRL); `minmo eval tts` reports it beside the WER.

The model is Microsoft's ONNX file inside the `speechmos` wheel. That package's Python module imports librosa and
requests for its P.808 model and file loading, which these scores do not need, so only the model file is read
here, and the scoring follows its `DNSMOS.__call__` (Microsoft's `dnsmos_local.py`): 16 kHz audio in 9.01 s windows
hopped by 1 s (a shorter clip is repeated until it fills one), each window's raw scores mapped through the
published polynomial fit, then averaged over the windows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SECONDS = 9.01
# the non-personalised polynomial fits of dnsmos_local.py (highest power first), raw score -> MOS
FITS = {
    "sig": (-0.08397278, 1.22083953, 0.0052439),
    "bak": (-0.13166888, 1.60915514, -0.39604546),
    "ovrl": (-0.06766283, 1.11546468, 0.04602535),
}


@dataclass(frozen=True)
class Scores:
    sig: float
    bak: float
    ovrl: float


def model_path() -> Path:
    """sig_bak_ovr.onnx in the installed `speechmos` package (found without importing the package)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("DNSMOS needs the speechmos wheel: pip install 'minmo[train]'")
    return Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"


class DNSMOS:
    """The P.835 model on the CPU; one instance scores any number of clips."""

    def __init__(self) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])

    def __call__(self, audio: np.ndarray) -> Scores:
        """Scores of a 16 kHz mono clip with samples in [-1, 1]."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or not audio.size:
            raise ValueError(f"expected a non-empty mono clip, got shape {audio.shape}")
        window = int(WINDOW_SECONDS * SAMPLE_RATE)
        while audio.size < window:
            audio = np.concatenate([audio, audio])
        hops = int(np.floor(audio.size / SAMPLE_RATE) - WINDOW_SECONDS) + 1
        windows = np.stack([audio[i * SAMPLE_RATE : i * SAMPLE_RATE + window] for i in range(hops)])  # all full
        raw = self.session.run(None, {"input_1": windows})[0]  # (windows, 3): sig, bak, ovrl
        mapped = {name: float(np.mean(np.polyval(FITS[name], raw[:, column])))
                  for column, name in enumerate(("sig", "bak", "ovrl"))}
        return Scores(**mapped)
