"""The shipped `nano` on a few spoken inputs, through the served path, by voices it never trained on: the speech it
hears is understood, and its duplex predictor takes the turn after a question and lets a backchannel go by."""

from __future__ import annotations

import numpy as np
import pytest

from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.train.duplex_data import CLASSES, Listener, Moment, SimulatedTurn
from minmo.train.evaluate import SpokenModel
from minmo.train.stage4 import predict
from minmo.train.voices import HELD_OUT_VOICES, available, synthesize

VOICE = next((v for v in HELD_OUT_VOICES if available(v)), None)
pytestmark = pytest.mark.skipif(VOICE is None, reason="no held-out TTS voice (espeak-ng or flite) on this machine")
REPLY = ("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")


@pytest.fixture(scope="module")
def served() -> SpokenModel:
    return SpokenModel("nano", None)


@pytest.fixture(scope="module")
def listener(served: SpokenModel) -> Listener:
    return Listener(served)


def _decision(listener: Listener, segments: tuple[str, ...], history) -> list[str]:
    predictor = build_component(load_config("nano"), "duplex_predictor").float().eval()
    moment = Moment("t", "eval", "", segments, ("respond",) * len(segments), history, VOICE.id, False)
    hidden = listener(moment, np.random.default_rng(0))
    return [CLASSES[int(p.argmax())] for p in predict(predictor, SimulatedTurn(moment, hidden))]


def test_the_shipped_predictor_takes_the_turn_after_a_question(listener: Listener):
    assert _decision(listener, ("What is the capital of Germany?",), ()) == ["respond"]


def test_the_shipped_predictor_lets_a_backchannel_over_the_reply_go_by(listener: Listener):
    assert _decision(listener, ("uh-huh",), REPLY) == ["backchannel"]


def test_the_shipped_model_transcribes_a_held_out_voice(served: SpokenModel):
    heard = served.transcribe(synthesize(VOICE, "What is nine plus nine?"))
    assert "nine plus nine" in heard.lower()
