"""`minmo bench state`: what each call of the encoder and token2wav hops carries, and what handling its streaming
state costs, in the old design (the state travels with every call as a `StreamState.to_bytes` blob) and now (the
state stays in the replica, keyed by the sequence; DESIGN.md §5).

The states are real: the config's speech encoder (random weights, on the CPU) encodes `seconds` of synthetic
speech, once with the old unlimited left context and once with the config's bounded one; token2wav's state is
the turn's tokens (what the flow model keeps) with the HiFT state that its vocoder leaves after `seconds` of mel
frames. The flow model itself never runs (at paper widths its Euler steps would take minutes on a CPU, and its
state does not depend on its output), so its `FlowCache` is left out: the flow's state is the recomputing one
(CosyVoice 2's; at paper widths the cache outgrows its default `stream_cache_mb` of 256 MB after about a second
of reply, and the stream recomputes from then on). Per call in the old design, the blob crossed the hop twice (in
the request and the response), was written once (`torch.save`) and read once (`torch.load`) by the model; now a
call carries only its chunk in and its output out, and the state is not copied at all.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from minmo.audio.synthetic import speech_like
from minmo.model.build import build_component
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, SPEECH_TOKEN_RATE_HZ, MinMoConfig, load_config
from minmo.model.speech_encoder import SpeechEncoder
from minmo.model.state import StreamState
from minmo.model.token2wav import Token2WavState

ENCODER_RATE = ENCODER_SAMPLE_RATE_HZ
EMBEDDING_HZ = 12.5  # the encoder's output rate (LLM input)
FEED_SAMPLES = 10240  # 640 ms of client audio per encoder step while building the state (fewer, bigger forwards)
CALL_SAMPLES = 2560  # 160 ms: one encoder chunk, the payload of one call in the table
TOKEN_CALL = 15  # speech tokens per token2wav call (one voice-LM block)
FLOAT_BYTES = 4
ID_BYTES = 8  # int64 token ids
TIMING_REPEATS = 5  # serialisation round trips timed per state (the median is reported)


@dataclass(frozen=True)
class HopState:
    """One hop after `seconds` of stream: per-call payload and state handling, old design vs now."""

    hop: str
    seconds: float
    chunk_bytes: int  # a call's new input + its output (the same in both designs)
    blob_bytes: int  # the state blob at this point of the stream, old design
    blob_ms: float  # torch.save + torch.load of that blob (median), per call in the old design
    kept_bytes: int  # the state the replica keeps now (bounded where the config bounds it)

    @property
    def before_bytes(self) -> int:
        return self.chunk_bytes + 2 * self.blob_bytes  # the blob went in with the request and came back


def state_bytes_and_ms(state: StreamState) -> tuple[int, float]:
    """Size of the state's blob and the median time to write and read it back (as the old hop did per call)."""
    timings, size = [], 0
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        blob = state.to_bytes()
        type(state).from_bytes(blob)
        timings.append(1000 * (time.perf_counter() - started))
        size = len(blob)
    return size, sorted(timings)[len(timings) // 2]


def tensor_bytes(state: StreamState) -> int:
    """Bytes of the tensors a state holds (what a replica keeps in memory for the stream)."""
    total = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    state.map_tensors(count)
    return total


def encoder_state(cfg: MinMoConfig, seconds: float, left_chunks: int) -> StreamState:
    """The speech encoder's state after `seconds` of speech with `left_chunks` of attention left context."""
    bounded = dataclasses.replace(cfg, voice_encoder=dataclasses.replace(cfg.voice_encoder, left_chunks=left_chunks))
    encoder = SpeechEncoder(bounded, load_pretrained=False).eval()
    pcm = torch.from_numpy(speech_like(np.random.default_rng(0), seconds)).float()
    state = encoder.init_state()
    with torch.inference_mode():
        for start in range(0, pcm.shape[0], FEED_SAMPLES):
            _, state = encoder.step(pcm[start : start + FEED_SAMPLES], state)
    return state


def token2wav_state(cfg: MinMoConfig, seconds: float) -> Token2WavState:
    """token2wav's state `seconds` into a turn: every token so far in the flow state, HiFT's after that many frames."""
    token2wav = build_component(cfg, "token2wav")
    tokens = torch.randint(0, cfg.flow.speech_vocab, (1, round(seconds * SPEECH_TOKEN_RATE_HZ)))
    flow = token2wav.flow.init_state()
    flow.tokens = torch.cat([flow.tokens, tokens], dim=1)
    flow.emitted = tokens.shape[1]
    flow.cache = None  # recomputing from the tokens (module docstring)
    mel = torch.randn(1, cfg.hift.mel_bins, tokens.shape[1] * cfg.flow.token_mel_ratio)
    hift = token2wav.hift.init_state()
    frames_per_call = TOKEN_CALL * cfg.flow.token_mel_ratio
    with torch.inference_mode():
        for start in range(0, mel.shape[2], frames_per_call):
            _, hift = token2wav.hift.step(mel[:, :, start : start + frames_per_call], hift)
    return Token2WavState(flow, hift)


def run_state_bench(config: str, seconds: float) -> list[HopState]:
    cfg = load_config(config)
    torch.manual_seed(0)
    llm_dim = cfg.input_projector.output_dim
    frames_per_call = round(CALL_SAMPLES / ENCODER_RATE * EMBEDDING_HZ)  # embeddings of one 160 ms call
    encoder_chunk = CALL_SAMPLES * FLOAT_BYTES + frames_per_call * llm_dim * FLOAT_BYTES
    old_blob, old_ms = state_bytes_and_ms(encoder_state(cfg, seconds, left_chunks=-1))
    kept = encoder_state(cfg, seconds, cfg.voice_encoder.left_chunks)
    samples_per_token = cfg.hift.samples_per_frame * cfg.flow.token_mel_ratio
    token_chunk = TOKEN_CALL * ID_BYTES + TOKEN_CALL * samples_per_token * FLOAT_BYTES
    vocoder = token2wav_state(cfg, seconds)
    vocoder_blob, vocoder_ms = state_bytes_and_ms(vocoder)
    return [
        HopState("encoder", seconds, encoder_chunk, old_blob, old_ms, tensor_bytes(kept)),
        HopState("vocoder", seconds, token_chunk, vocoder_blob, vocoder_ms, tensor_bytes(vocoder)),
    ]
