"""Our Silero VAD module against the official JIT model, and its explicit streaming state.

The test audio is synthesized speech-like sound from `minmo.audio.synthetic` (no TTS needed in CI).
"""

import numpy as np
import pytest
import torch
from silero_vad import load_silero_vad

from minmo.audio.synthetic import NOISE_LEVEL, speech_like
from minmo.audio.vad import SAMPLE_RATE, WINDOW_SAMPLES, SileroVad, StreamingVad, StreamingVadState, wheel_file

JIT_TOLERANCE = 1e-4
SILENCE_S, SPEECH_S = 1.0, 2.0


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """1 s noise, 2 s speech-like, 1 s noise; a whole number of windows."""
    rng = np.random.default_rng(1)
    silence = np.zeros(int(SILENCE_S * SAMPLE_RATE))
    signal = np.concatenate([silence, speech_like(rng, SPEECH_S), silence])
    signal = (signal + NOISE_LEVEL * rng.standard_normal(signal.size)).astype(np.float32)
    return signal[: signal.size // WINDOW_SAMPLES * WINDOW_SAMPLES]


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad.from_pretrained()


def step_windows(model: SileroVad, audio: np.ndarray) -> np.ndarray:
    state = model.init_state()
    out = []
    with torch.inference_mode():
        for window in torch.from_numpy(audio).split(WINDOW_SAMPLES):
            prob, state = model.step(window.unsqueeze(0), state)
            out.append(float(prob))
    return np.array(out)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside silero_vad/torch.jit, not ours
def test_probabilities_equal_the_official_jit_model(model: SileroVad, audio: np.ndarray) -> None:
    jit = load_silero_vad()  # stateful: fed the windows in order, like a stream
    with torch.inference_mode():
        reference = np.array([float(jit(w.unsqueeze(0), SAMPLE_RATE)) for w in torch.from_numpy(audio).split(512)])
    np.testing.assert_allclose(step_windows(model, audio), reference, atol=JIT_TOLERANCE, rtol=0)


def test_speech_scores_high_and_noise_low(model: SileroVad, audio: np.ndarray) -> None:
    probs = step_windows(model, audio)
    windows_per_s = SAMPLE_RATE / WINDOW_SAMPLES
    lead = probs[int(0.25 * windows_per_s) : int(SILENCE_S * windows_per_s)]  # after the first windows' settle
    speech = probs[int((SILENCE_S + 0.1) * windows_per_s) : int((SILENCE_S + SPEECH_S - 0.1) * windows_per_s)]
    tail = probs[int((SILENCE_S + SPEECH_S + 0.4) * windows_per_s) :]
    assert lead.max() < 0.15 and tail.max() < 0.15
    assert np.mean(speech > 0.5) > 0.9 and np.median(speech) > 0.8  # short dips between syllables are normal


def test_streaming_any_chunk_sizes_equals_window_steps(model: SileroVad, audio: np.ndarray) -> None:
    vad = StreamingVad(model)
    state = vad.init_state()
    rng = np.random.default_rng(0)
    frames = []
    position = 0
    while position < audio.size:
        size = int(rng.integers(1, 3 * WINDOW_SAMPLES))
        new, state = vad.step(audio[position : position + size], state)
        frames += new
        position += size
    assert [f.start_sample for f in frames] == list(range(0, audio.size, WINDOW_SAMPLES))
    np.testing.assert_allclose([f.prob for f in frames], step_windows(model, audio), atol=1e-6)
    assert frames[1].start_ms == 32.0 and frames[1].end_ms == 64.0


def test_flush_scores_the_leftover_samples(model: SileroVad, audio: np.ndarray) -> None:
    vad = StreamingVad(model)
    frames, state = vad.step(audio[: WINDOW_SAMPLES + 100], vad.init_state())
    assert len(frames) == 1 and state.pending.numel() == 100
    last, state = vad.flush(state)
    assert [f.start_sample for f in last] == [WINDOW_SAMPLES]
    assert vad.flush(state) == ([], state)


def test_interleaved_streams_do_not_share_state(model: SileroVad, audio: np.ndarray) -> None:
    vad = StreamingVad(model)
    other = np.flip(audio).copy()
    states = [vad.init_state(), vad.init_state()]
    probs: list[list[float]] = [[], []]
    for start in range(0, audio.size, 1000):
        for index, signal in enumerate((audio, other)):
            frames, states[index] = vad.step(signal[start : start + 1000], states[index])
            probs[index] += [f.prob for f in frames]
    np.testing.assert_allclose(probs[0], step_windows(model, audio)[: len(probs[0])], atol=1e-6)
    np.testing.assert_allclose(probs[1], step_windows(model, other)[: len(probs[1])], atol=1e-6)


def test_state_survives_serialisation_mid_stream(model: SileroVad, audio: np.ndarray) -> None:
    vad = StreamingVad(model)
    half = audio.size // 2 + 123
    _, state = vad.step(audio[:half], vad.init_state())
    restored = StreamingVadState.from_bytes(state.to_bytes())
    expected, _ = vad.step(audio[half:], state)
    resumed, _ = vad.step(audio[half:], restored)
    assert resumed == expected


def test_the_wheels_safetensors_checkpoint_loads_by_path(audio: np.ndarray) -> None:
    """Same architecture and key names, different (older) weights than the JIT: opt-in only."""
    model = SileroVad.from_pretrained(wheel_file("silero_vad_16k.safetensors"))
    probs = step_windows(model, audio)
    assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_serialised_state_stays_small_whatever_the_chunk_size(model: SileroVad, audio: np.ndarray) -> None:
    """The state must not pin the caller's audio buffer (a tensor view would serialise all of it)."""
    vad = StreamingVad(model)
    _, state = vad.step(audio, vad.init_state())
    assert len(state.to_bytes()) < 16_000
