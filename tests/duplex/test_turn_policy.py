"""Every rule of turn taking, one row each: a policy brought to a state by earlier events, one event, the
decisions it must give and the state it must leave (no gRPC, no event loop: `TurnPolicy` is synchronous)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from minmo.duplex.turn_policy import (
    PATIENCE_MS,
    RESPOND_THRESHOLD,
    AnswerSpoken,
    AnswerTyped,
    CancelRequested,
    Decision,
    EncoderLost,
    Event,
    FailSpokenTurn,
    Flushed,
    FlushEncoder,
    FlushLost,
    Interrupt,
    LlmOpened,
    OpenUserTurn,
    PatienceOver,
    Predicted,
    ResponseEnded,
    ResponseStarted,
    ShowBackchannel,
    TextTyped,
    TurnPolicy,
    UserSpeechAudio,
    UserSpeechStarted,
    UserSpeechStopped,
    WaitForMore,
)

HIGH = RESPOND_THRESHOLD + 0.1
LOW = RESPOND_THRESHOLD - 0.1

# States as the events that lead to them.
SPEAKING = [UserSpeechStarted("u1", audio_playing=False, input_offset_ms=120.0), UserSpeechAudio(400.0)]
VAD_ENDED = [*SPEAKING, UserSpeechStopped()]  # VAD decides: the flush was asked for to answer
GENERATING = [*VAD_ENDED, Flushed("u1", 3.0), ResponseStarted("r1")]
GENERATED = [*GENERATING, ResponseEnded("r1")]  # its audio may still play
TRAINED = [LlmOpened(predictor_trained=True)]
PREDICTOR_SPEAKING = [*TRAINED, *SPEAKING]
PREDICTOR_FLUSHING = [*PREDICTOR_SPEAKING, Predicted("u1", respond=HIGH, backchannel=LOW)]
# full duplex: a trained predictor decides, the reply r1 was generated and its audio plays, the user speaks over it
PLAYING = [*TRAINED, *GENERATED]
OVER_PLAYBACK = [*PLAYING, UserSpeechStarted("u2", audio_playing=True), UserSpeechAudio(300.0)]
OVER_PLAYBACK_FLUSHED = [*OVER_PLAYBACK, UserSpeechStopped(), Flushed("u2", 4.0)]
# the predictor kept listening at the user's pause (the turn is flushed, open, and waits for more)
KEPT_LISTENING = [
    *PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), Predicted("u1", respond=LOW, backchannel=LOW)
]


@dataclass(frozen=True)
class Row:
    name: str
    before: list[Event]
    event: Event
    decisions: list[Decision]
    state: dict = field(default_factory=dict)  # TurnPolicy attributes after the event
    predictor_mode: bool = False


ROWS = [
    # --- user speech -------------------------------------------------------------------------------------------
    Row(
        "speech opens a user turn",
        [],
        UserSpeechStarted("u1", audio_playing=False, input_offset_ms=120.0),
        [OpenUserTurn("u1", 120.0)],
        {"user_turn": "u1", "user_audio_ms": 0.0, "respond_on_flush": False},
    ),
    Row("speech audio is counted", SPEAKING, UserSpeechAudio(80.0), [], {"user_audio_ms": 480.0}),
    Row(
        "VAD end of speech asks for the flush that answers",
        SPEAKING,
        UserSpeechStopped(),
        [FlushEncoder("u1", required=True)],
        {"respond_on_flush": True},
    ),
    Row(
        "the flush it asked for starts the response",
        VAD_ENDED,
        Flushed("u1", 3.0),
        [AnswerSpoken("u1", 400.0, 3.0)],
        {"respond_on_flush": False},
    ),
    Row("a flush nobody asked for is ignored", SPEAKING, Flushed("u1", 3.0), []),
    Row("a flush while a response generates is ignored", [*GENERATING, UserSpeechStopped()], Flushed("u1", 1.0), []),
    Row(
        "a new utterance forgets the earlier flush request",
        VAD_ENDED,
        UserSpeechStarted("u2", audio_playing=False),
        [OpenUserTurn("u2", 0.0)],
        {"user_turn": "u2", "respond_on_flush": False, "user_audio_ms": 0.0},
    ),
    # --- barge-in ----------------------------------------------------------------------------------------------
    Row(
        "speech interrupts a response that generates",
        GENERATING,
        UserSpeechStarted("u2", audio_playing=False),
        [Interrupt("r1", generating=True), OpenUserTurn("u2", 0.0)],
        {"generating": None, "playing": None, "user_turn": "u2"},
    ),
    Row(
        "speech interrupts a generated response whose audio still plays",
        GENERATED,
        UserSpeechStarted("u2", audio_playing=True),
        [Interrupt("r1", generating=False), OpenUserTurn("u2", 0.0)],
        {"playing": None},
    ),
    Row(
        "speech after the audio played out interrupts nothing",
        GENERATED,
        UserSpeechStarted("u2", audio_playing=False),
        [OpenUserTurn("u2", 0.0)],
        {"playing": "r1"},
    ),
    Row(
        "an interrupted response is not interrupted twice",
        [*GENERATING, CancelRequested(audio_playing=True)],
        CancelRequested(audio_playing=True),
        [],
    ),
    Row("cancel with no response does nothing", [], CancelRequested(audio_playing=False), []),
    Row(
        "cancel stops a response that generates",
        GENERATING,
        CancelRequested(audio_playing=False),
        [Interrupt("r1", generating=True)],
        {"generating": None, "playing": None},
    ),
    Row(
        "cancel stops audio still playing",
        GENERATED,
        CancelRequested(audio_playing=True),
        [Interrupt("r1", generating=False)],
    ),
    # --- typed turns -------------------------------------------------------------------------------------------
    Row(
        "a typed turn is answered at once",
        [],
        TextTyped("t1", "hello", audio_playing=False, trace_parent={"traceparent": "00-ab"}),
        [AnswerTyped("t1", "hello", {"traceparent": "00-ab"})],
    ),
    Row(
        "a typed turn interrupts the response first",
        GENERATING,
        TextTyped("t1", "stop", audio_playing=False),
        [Interrupt("r1", generating=True), AnswerTyped("t1", "stop", {})],
    ),
    # --- encoder loss --------------------------------------------------------------------------------------------
    Row(
        "a lost end-of-utterance fails the spoken turn",
        VAD_ENDED,
        FlushLost(),
        [FailSpokenTurn("u1")],
        {"respond_on_flush": False},
    ),
    Row(
        "a lost encoder fails the turn waiting for its flush",
        VAD_ENDED,
        EncoderLost(),
        [FailSpokenTurn("u1")],
        {"respond_on_flush": False},
    ),
    Row("a lost encoder with no turn waiting costs nothing", SPEAKING, EncoderLost(), []),
    Row("a lost encoder while a response generates costs nothing", GENERATING, EncoderLost(), []),
    # --- the duplex predictor ------------------------------------------------------------------------------------
    Row(
        "a trained predictor's respond flushes early",
        PREDICTOR_SPEAKING,
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [FlushEncoder("u1", required=False)],
        {"respond_on_flush": True},
        predictor_mode=True,
    ),
    Row(
        "a trained predictor's backchannel is shown, the turn goes on",
        PREDICTOR_SPEAKING,
        Predicted("u1", respond=LOW, backchannel=HIGH),
        [ShowBackchannel("u1")],
        {"respond_on_flush": False},
        predictor_mode=True,
    ),
    Row(
        "backchannel and respond together",
        PREDICTOR_SPEAKING,
        Predicted("u1", respond=HIGH, backchannel=HIGH),
        [ShowBackchannel("u1"), FlushEncoder("u1", required=False)],
        predictor_mode=True,
    ),
    Row(
        "respond is asked once per turn",
        PREDICTOR_FLUSHING,
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [],
        predictor_mode=True,
    ),
    Row(
        "a late signal for the turn already answered is ignored",
        [*PREDICTOR_FLUSHING, UserSpeechStopped(), Flushed("u1", 2.0), ResponseStarted("r1")],
        Predicted("u1", respond=HIGH, backchannel=LOW, stop_speaking=HIGH, audio_playing=True),
        [],
        {"generating": "r1"},
        predictor_mode=True,
    ),
    Row(
        "a signal for an earlier user turn is ignored",
        [*PREDICTOR_SPEAKING, UserSpeechStarted("u2", audio_playing=False)],
        Predicted("u1", respond=HIGH, backchannel=HIGH),
        [],
        predictor_mode=True,
    ),
    Row(
        "with the predictor deciding, the VAD's end of speech flushes but does not answer",
        PREDICTOR_SPEAKING,
        UserSpeechStopped(),
        [FlushEncoder("u1", required=True)],
        {"respond_on_flush": False},
        predictor_mode=True,
    ),
    Row(
        "the flush the predictor asked for starts the response",
        [*PREDICTOR_FLUSHING, UserSpeechStopped()],
        Flushed("u1", 2.0),
        [AnswerSpoken("u1", 400.0, 2.0)],
        predictor_mode=True,
    ),
    Row(
        "an untrained predictor decides nothing (the VAD does)",
        [LlmOpened(predictor_trained=False), *SPEAKING],
        Predicted("u1", respond=HIGH, backchannel=HIGH),
        [],
        predictor_mode=True,
    ),
    Row(
        "a trained predictor decides nothing in SERVER_VAD mode",
        [*TRAINED, *SPEAKING],
        Predicted("u1", respond=HIGH, backchannel=HIGH),
        [],
    ),
    Row(
        "an untrained predictor leaves the end of speech to the VAD",
        [LlmOpened(predictor_trained=False), *SPEAKING],
        UserSpeechStopped(),
        [FlushEncoder("u1", required=True)],
        {"respond_on_flush": True},
        predictor_mode=True,
    ),
    Row(
        "the LLM says whether its predictor is trained",
        [],
        LlmOpened(predictor_trained=True),
        [],
        {"predictor_trained": True, "predictor_decides": True},
        predictor_mode=True,
    ),
    Row(
        "a replica with an untrained predictor hands the decision back to the VAD",
        TRAINED,
        LlmOpened(predictor_trained=False),
        [],
        {"predictor_decides": False},
        predictor_mode=True,
    ),
    # --- full duplex: the LLM listens while the reply plays --------------------------------------------------------
    Row(
        "with a trained predictor deciding, speech over a playing reply does not interrupt it",
        PLAYING,
        UserSpeechStarted("u2", audio_playing=True),
        [OpenUserTurn("u2", 0.0)],
        {"playing": "r1", "user_turn": "u2"},
        predictor_mode=True,
    ),
    Row(
        "speech still interrupts a reply whose text generates (the LLM cannot listen then)",
        [*TRAINED, *GENERATING],
        UserSpeechStarted("u2", audio_playing=True),
        [Interrupt("r1", generating=True), OpenUserTurn("u2", 0.0)],
        predictor_mode=True,
    ),
    Row(
        "with the reply's text done and its speech still being made, speech does not interrupt",
        [*TRAINED, *GENERATING],
        UserSpeechStarted("u2", audio_playing=True, llm_listening=True),
        [OpenUserTurn("u2", 0.0)],
        {"generating": "r1", "playing": "r1"},
        predictor_mode=True,
    ),
    Row(
        "stop speaking while the reply's speech is still being made cancels it and answers",
        [*TRAINED, *GENERATING, UserSpeechStarted("u2", audio_playing=True, llm_listening=True),
         UserSpeechAudio(300.0), UserSpeechStopped(), Flushed("u2", 4.0)],
        Predicted("u2", respond=LOW, backchannel=LOW, stop_speaking=HIGH, audio_playing=True),
        [Interrupt("r1", generating=True), AnswerSpoken("u2", 300.0, 4.0)],
        {"generating": None, "playing": None},
        predictor_mode=True,
    ),
    Row(
        "in VAD mode speech interrupts even when the LLM could listen",
        GENERATING,
        UserSpeechStarted("u2", audio_playing=True, llm_listening=True),
        [Interrupt("r1", generating=True), OpenUserTurn("u2", 0.0)],
    ),
    Row(
        "a backchannel over the reply is shown and the reply goes on",
        OVER_PLAYBACK_FLUSHED,
        Predicted("u2", respond=LOW, backchannel=HIGH, stop_speaking=LOW, audio_playing=True),
        [ShowBackchannel("u2")],
        {"playing": "r1"},
        predictor_mode=True,
    ),
    Row(
        "stop speaking after the end of speech interrupts and answers the flushed turn",
        OVER_PLAYBACK_FLUSHED,
        Predicted("u2", respond=LOW, backchannel=LOW, stop_speaking=HIGH, audio_playing=True),
        [Interrupt("r1", generating=False), AnswerSpoken("u2", 300.0, 4.0)],
        {"playing": None, "answered": "u2"},
        predictor_mode=True,
    ),
    Row(
        "stop speaking mid-speech interrupts; the end of speech then answers",
        OVER_PLAYBACK,
        Predicted("u2", respond=LOW, backchannel=LOW, stop_speaking=HIGH, audio_playing=True),
        [Interrupt("r1", generating=False)],
        {"answer_at_end": True, "respond_on_flush": False},
        predictor_mode=True,
    ),
    Row(
        "after a barge-in the end of speech asks for the flush that answers",
        [*OVER_PLAYBACK, Predicted("u2", respond=LOW, backchannel=LOW, stop_speaking=HIGH, audio_playing=True)],
        UserSpeechStopped(),
        [FlushEncoder("u2", required=True)],
        {"respond_on_flush": True},
        predictor_mode=True,
    ),
    Row(
        "stop speaking once the reply played out answers the turn (the user took the floor)",
        OVER_PLAYBACK_FLUSHED,
        Predicted("u2", respond=LOW, backchannel=LOW, stop_speaking=HIGH, audio_playing=False),
        [AnswerSpoken("u2", 300.0, 4.0)],
        predictor_mode=True,
    ),
    Row(
        "respond after the flush came answers at once (an encoder that emits at the end of speech)",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5)],
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [AnswerSpoken("u1", 400.0, 2.5)],
        {"answered": "u1", "respond_on_flush": False},
        predictor_mode=True,
    ),
    Row(
        "a turn is answered once",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), Predicted("u1", respond=HIGH, backchannel=LOW)],
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [],
        predictor_mode=True,
    ),
    Row(
        "keep listening at a pause leaves the turn open",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5)],
        Predicted("u1", respond=LOW, backchannel=LOW),
        [],
        {"answered": None, "user_turn": "u1"},
        predictor_mode=True,
    ),
    Row(
        "a new request over the playing reply takes the turn",
        OVER_PLAYBACK_FLUSHED,
        Predicted("u2", respond=HIGH, backchannel=LOW, stop_speaking=LOW, audio_playing=True),
        [Interrupt("r1", generating=False), AnswerSpoken("u2", 300.0, 4.0)],
        predictor_mode=True,
    ),
    # --- patience: a turn the predictor left open is answered after the user's silence ---------------------------
    Row(
        "with the predictor deciding, a flush that answers nothing starts the wait",
        [*PREDICTOR_SPEAKING, UserSpeechStopped()],
        Flushed("u1", 2.5),
        [WaitForMore("u1", PATIENCE_MS)],
        predictor_mode=True,
    ),
    Row(
        "the wait's end answers a turn the predictor kept listening to",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), Predicted("u1", respond=LOW, backchannel=LOW)],
        PatienceOver("u1", audio_playing=False),
        [AnswerSpoken("u1", 400.0, 2.5)],
        {"answered": "u1"},
        predictor_mode=True,
    ),
    Row(
        "the wait's end after a backchannel answers nothing",
        [*OVER_PLAYBACK_FLUSHED, Predicted("u2", respond=LOW, backchannel=HIGH)],
        PatienceOver("u2", audio_playing=False),
        [],
        predictor_mode=True,
    ),
    Row(
        "the wait's end while a reply still plays answers nothing",
        OVER_PLAYBACK_FLUSHED,
        PatienceOver("u2", audio_playing=True),
        [],
        predictor_mode=True,
    ),
    Row(
        "the wait's end for an answered turn does nothing",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), Predicted("u1", respond=HIGH, backchannel=LOW)],
        PatienceOver("u1", audio_playing=False),
        [],
        predictor_mode=True,
    ),
    Row(
        "the user speaking again makes the earlier wait moot",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), UserSpeechStarted("u2", audio_playing=False)],
        PatienceOver("u1", audio_playing=False),
        [],
        predictor_mode=True,
    ),
    # --- a turn the predictor kept listening to goes on: one id, its audio counted whole ----------------------------
    Row(
        "speech after the predictor kept listening goes on with the same user turn",
        KEPT_LISTENING,
        UserSpeechStarted("u2", audio_playing=False, input_offset_ms=900.0),
        [OpenUserTurn("u1", 900.0, continued=True)],
        {"user_turn": "u1", "user_audio_ms": 400.0, "speech_ended": False, "flush_ms": None},
        predictor_mode=True,
    ),
    Row(
        "a respond that comes while the user speaks again (it judged the audio before the pause) waits for the end",
        [*KEPT_LISTENING, UserSpeechStarted("u2", audio_playing=False), UserSpeechAudio(300.0)],
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [],
        {"answered": None, "respond_on_flush": False},
        predictor_mode=True,
    ),
    Row(
        "the continued turn is answered whole",
        [*KEPT_LISTENING, UserSpeechStarted("u2", audio_playing=False), UserSpeechAudio(300.0), UserSpeechStopped(),
         Flushed("u1", 3.0)],
        Predicted("u1", respond=HIGH, backchannel=LOW),
        [AnswerSpoken("u1", 700.0, 3.0)],
        {"answered": "u1"},
        predictor_mode=True,
    ),
    Row(
        "speech after an answered turn opens a new one",
        [*PREDICTOR_SPEAKING, UserSpeechStopped(), Flushed("u1", 2.5), Predicted("u1", respond=HIGH, backchannel=LOW),
         ResponseStarted("r1"), ResponseEnded("r1")],
        UserSpeechStarted("u2", audio_playing=False, input_offset_ms=900.0),
        [OpenUserTurn("u2", 900.0)],
        {"user_turn": "u2", "user_audio_ms": 0.0},
        predictor_mode=True,
    ),
    Row(
        "speech after any response since (a typed turn's) opens a new one",
        [*KEPT_LISTENING, ResponseStarted("r1"), ResponseEnded("r1")],
        UserSpeechStarted("u2", audio_playing=False, input_offset_ms=900.0),
        [OpenUserTurn("u2", 900.0)],
        {"user_turn": "u2", "user_audio_ms": 0.0},
        predictor_mode=True,
    ),
    Row(
        "speech after a backchannel opens a new one",
        [*OVER_PLAYBACK_FLUSHED, Predicted("u2", respond=LOW, backchannel=HIGH)],
        UserSpeechStarted("u3", audio_playing=True, input_offset_ms=900.0, llm_listening=True),
        [OpenUserTurn("u3", 900.0)],
        {"user_turn": "u3"},
        predictor_mode=True,
    ),
    Row(
        "with the VAD deciding every segment is a turn of its own",
        [*VAD_ENDED, Flushed("u1", 3.0), ResponseStarted("r1"), ResponseEnded("r1")],
        UserSpeechStarted("u2", audio_playing=False, input_offset_ms=900.0),
        [OpenUserTurn("u2", 900.0)],
        {"user_turn": "u2"},
    ),
    # --- response bookkeeping ------------------------------------------------------------------------------------
    Row("a response starts", [], ResponseStarted("r1"), [], {"generating": "r1", "playing": "r1"}),
    Row("a response ends, its audio may play", GENERATING, ResponseEnded("r1"), [], {"generating": None}),
    Row(
        "the end of an interrupted response changes nothing",
        [*GENERATING, CancelRequested(audio_playing=False), ResponseStarted("r2")],
        ResponseEnded("r1"),
        [],
        {"generating": "r2", "playing": "r2"},
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_transition(row: Row) -> None:
    policy = TurnPolicy(predictor_mode=row.predictor_mode)
    for event in row.before:
        policy.handle(event)
    assert policy.handle(row.event) == row.decisions
    for name, value in row.state.items():
        assert getattr(policy, name) == value, name


def test_every_event_and_decision_has_a_row() -> None:
    """The table covers every event type and every decision type the policy knows."""
    events = {type(row.event) for row in ROWS}
    decisions = {type(decision) for row in ROWS for decision in row.decisions}
    assert events == set(Event.__args__)
    assert decisions == set(Decision.__args__)


def test_not_an_event_is_refused() -> None:
    with pytest.raises(TypeError, match="not a turn-policy event"):
        TurnPolicy(predictor_mode=False).handle("speech")
