"""One whole `tiny` speech-to-speech turn in-process, through the streaming steps."""

import numpy as np
import pytest
import torch

from minmo.audio.synthetic import utterance
from minmo.model.config import load_config
from minmo.model.interleave import SPEECH_TOKEN_RATE_HZ, VoiceSchedule
from minmo.model.pipeline import MinMoPipeline

CHUNK = 1600  # 100 ms at 16 kHz


@pytest.fixture(scope="module")
def turn():
    pipeline = MinMoPipeline(load_config("tiny"))
    pcm = torch.from_numpy(utterance(seed=0, lead_s=0.2, speech_s=1.2, tail_s=0.2))
    streamed: list[torch.Tensor] = []
    result = pipeline.run_turn(pcm.split(CHUNK), on_audio=streamed.append)
    return result, streamed, pcm


def test_turn_produces_finite_non_silent_24khz_audio(turn):
    result, streamed, _ = turn
    assert result.sample_rate == 24000
    assert torch.isfinite(result.pcm).all()
    assert result.pcm.abs().max() > 1e-3 and result.pcm.std() > 1e-4, "not silence"
    assert torch.equal(torch.cat(streamed), result.pcm), "what streamed out is the whole response"
    assert len(streamed) > 1, "audio comes out chunk by chunk, not at the end"


def test_audio_length_follows_the_speech_tokens_and_the_5_15_schedule(turn):
    result, _, _ = turn
    text_positions = len(result.text_token_ids)
    assert text_positions > 0
    assert result.pcm.shape[0] == len(result.speech_tokens) * 24000 // SPEECH_TOKEN_RATE_HZ
    schedule = VoiceSchedule()
    minimum = schedule.full_blocks(text_positions) * schedule.speech_block
    assert minimum <= len(result.speech_tokens) <= schedule.max_speech_tokens(text_positions)
    assert 0.2 < result.audio_s < 30, "plausible length for a short reply"


def test_one_predictor_signal_per_encoder_chunk(turn):
    result, _, pcm = turn
    encoder_chunks = np.ceil(pcm.shape[0] / 16000 * 25 / 4)  # 25 Hz frames in chunks of 4 (160 ms)
    assert len(result.predictor_probs) == encoder_chunks
    for probs in result.predictor_probs:
        assert probs.shape == (4,) and abs(float(probs.sum()) - 1) < 1e-5


def test_first_audio_arrives_before_the_response_is_done(turn):
    result, _, _ = turn
    assert result.first_token_s is not None and result.first_audio_s is not None
    assert result.end_of_speech_s <= result.first_token_s <= result.first_audio_s < result.done_s
