"""Turn taking as a synchronous state machine: what happened in, what to do out.

The conductor (`minmo.duplex.conversation`) turns everything that happens in a session — the VAD heard speech
start or stop, the encoder flushed an utterance, the LLM's duplex predictor fired, the client typed or cancelled,
a response began or ended — into an event, hands it to `TurnPolicy.handle`, and executes the decisions it gets
back in order. The policy owns every rule of turn taking and does no I/O, so each rule is a row in a table test
(tests/duplex/test_turn_policy.py):

- user speech (or a typed turn, or cancel_response) interrupts the assistant while its response generates or its
  audio still plays; a response already played out is left alone;
- full duplex (DESIGN.md §7): when a trained predictor decides, user speech while the reply's audio plays (its
  text generated) does not interrupt: the LLM listens, and the predictor's `stop_speaking` or `respond` gives the
  user the turn (the reply stops; the turn is answered at its end of speech), its `backchannel` ("uh-huh") lets
  the reply go on. While the reply's text still generates the LLM cannot listen, so speech interrupts as in VAD
  mode;
- a spoken turn is answered once the encoder has flushed it: the end of speech asks for that flush when the VAD
  decides turns, the predictor's `respond` asks for it (even before the VAD's end of speech) when a trained
  predictor decides, or answers at once when the flush already came (an encoder that emits at the end of
  speech, like nano's Whisper, gives the predictor the turn only then);
- a backchannel from the predictor is shown to the client and never starts or stops a response;
- a flushed turn the trained predictor neither answered nor called a backchannel is answered after PATIENCE_MS of
  the user's silence (a predictor that wrongly keeps listening must not leave the user waiting); speech before then
  goes on with the same user turn (its id, its audio count), as the LLM's user turn stays open;
- a flush nobody asked for, or one arriving while a response generates, is ignored;
- a spoken turn whose encoder is lost before its flush fails (its audio never reached the history);
- a typed turn is answered at once.

Time and audio are observations, not decisions: an event that may interrupt says whether the last response's
audio is still playing (`audio_playing`), measured by the conductor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

RESPOND_THRESHOLD = 0.5  # predictor probability above which `respond` / `backchannel` counts
# After a flushed user turn the predictor neither answered nor called a backchannel, how long the user may stay
# silent before the turn is answered anyway: a predictor that wrongly keeps listening must not leave the user waiting.
PATIENCE_MS = 2000.0


# --- events: what happened -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmOpened:
    """The LLM stream (re)opened; its model says whether the duplex predictor is trained."""

    predictor_trained: bool


@dataclass(frozen=True)
class UserSpeechStarted:
    """The VAD confirmed user speech; `turn_id` names the new user turn, `input_offset_ms` where in the input it
    started; `llm_listening`: no reply text is being generated (the LLM can take the user's audio now, while the
    last reply's speech may still be synthesised and played)."""

    turn_id: str
    audio_playing: bool
    input_offset_ms: float = 0.0
    llm_listening: bool = False


@dataclass(frozen=True)
class UserSpeechAudio:
    """Speech audio of the current user turn went to the encoder."""

    duration_ms: float


@dataclass(frozen=True)
class UserSpeechStopped:
    """The VAD decided the user stopped speaking."""


@dataclass(frozen=True)
class FlushLost:
    """The end-of-utterance write found the encoder stream broken."""


@dataclass(frozen=True)
class EncoderLost:
    """The encoder stream broke (its reader ended)."""


@dataclass(frozen=True)
class Predicted:
    """A duplex predictor signal from the LLM for `turn_id` (probabilities in [0, 1]); `audio_playing` as for
    UserSpeechStarted (a `stop_speaking` interrupts only a reply still playing)."""

    turn_id: str
    respond: float
    backchannel: float
    stop_speaking: float = 0.0
    audio_playing: bool = False


@dataclass(frozen=True)
class Flushed:
    """The encoder flushed the utterance of `turn_id`: all its embeddings are in the LLM context (`compute_ms`:
    the encoder's time for the flush, for the latency report)."""

    turn_id: str
    compute_ms: float = 0.0


@dataclass(frozen=True)
class TextTyped:
    """The client typed a turn (already validated); `turn_id` names it, `trace_parent` is the client's trace
    context."""

    turn_id: str
    text: str
    audio_playing: bool
    trace_parent: Mapping[str, str] = field(default_factory=dict)
    voice_instruction: str = ""  # how to speak this turn's reply (the session's instruction when not overridden)


@dataclass(frozen=True)
class CancelRequested:
    """The client sent cancel_response."""

    audio_playing: bool


@dataclass(frozen=True)
class PatienceOver:
    """The wait asked for by `WaitForMore` ended (`audio_playing` as for UserSpeechStarted)."""

    turn_id: str
    audio_playing: bool


@dataclass(frozen=True)
class ResponseStarted:
    turn_id: str


@dataclass(frozen=True)
class ResponseEnded:
    """The response of `turn_id` stopped generating (completed or failed); its audio may still play."""

    turn_id: str


Event = (
    LlmOpened
    | UserSpeechStarted
    | UserSpeechAudio
    | UserSpeechStopped
    | FlushLost
    | EncoderLost
    | Predicted
    | Flushed
    | TextTyped
    | CancelRequested
    | ResponseStarted
    | ResponseEnded
    | PatienceOver
)


# --- decisions: what to do -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interrupt:
    """Stop the response of `turn_id`: cancel it if `generating`, keep only what the user heard."""

    turn_id: str
    generating: bool


@dataclass(frozen=True)
class OpenUserTurn:
    """A spoken user turn begins: reopen lost streams, start its trace, tell the client. `continued`: the user
    speaks again in the turn the predictor kept listening to (same id, same trace)."""

    turn_id: str
    input_offset_ms: float
    continued: bool = False


@dataclass(frozen=True)
class FlushEncoder:
    """Ask the encoder to flush the utterance of `turn_id`. `required`: the end of speech itself, whose loss fails
    the turn; otherwise the predictor's early flush, whose loss `EncoderLost` handles."""

    turn_id: str
    required: bool


@dataclass(frozen=True)
class ShowBackchannel:
    """Tell the client the predictor heard a backchannel moment; the turn goes on."""

    turn_id: str


@dataclass(frozen=True)
class AnswerSpoken:
    """Record the spoken user turn (its audio length) and start the response."""

    turn_id: str
    audio_ms: float
    encoder_flush_ms: float


@dataclass(frozen=True)
class AnswerTyped:
    """Record the typed user turn in the history and the LLM context, and start the response."""

    turn_id: str
    text: str
    trace_parent: Mapping[str, str]
    voice_instruction: str = ""


@dataclass(frozen=True)
class FailSpokenTurn:
    """The spoken turn's audio was lost with the encoder: end it failed (the history never got it)."""

    turn_id: str


@dataclass(frozen=True)
class WaitForMore:
    """Send PatienceOver(`turn_id`) after `ms` (the flushed turn is answered then if nothing else decided)."""

    turn_id: str
    ms: float


Decision = (
    Interrupt
    | OpenUserTurn
    | FlushEncoder
    | ShowBackchannel
    | AnswerSpoken
    | AnswerTyped
    | FailSpokenTurn
    | WaitForMore
)


# --- the policy ----------------------------------------------------------------------------------------------


class TurnPolicy:
    """One session's turn-taking state. `predictor_mode`: the session asked for turn detection by the LLM's
    predictor (it decides only once the LLM says its predictor is trained; until then the VAD decides)."""

    def __init__(self, predictor_mode: bool) -> None:
        self.predictor_mode = predictor_mode
        self.predictor_trained = False
        self.user_turn: str | None = None  # the spoken user turn last heard
        self.open_turn: str | None = None  # the user turn the LLM still holds open (no response started since)
        self.user_audio_ms = 0.0  # its speech audio so far
        self.respond_on_flush = False  # a flush was asked for to answer the user turn
        self.speech_ended = False  # the VAD heard the end of the user turn's speech
        self.resumed = False  # the user speaks again in a turn the predictor kept listening to (after a pause)
        self.flush_ms: float | None = None  # the user turn's flush came (its encoder compute time); None: not yet
        self.answer_at_end = False  # a barge-in: answer this turn at the end of speech, whoever decides
        self.answered: str | None = None  # the user turn an AnswerSpoken was given for (answered once)
        self.backchannel_turn: str | None = None  # the user turn the predictor called a backchannel
        self.generating: str | None = None  # turn id of the response generating
        self.playing: str | None = None  # the last response not interrupted: generating, or its audio may play

    @property
    def predictor_decides(self) -> bool:
        return self.predictor_mode and self.predictor_trained

    def handle(self, event: Event) -> list[Decision]:
        match event:
            case LlmOpened(predictor_trained=trained):
                self.predictor_trained = trained
                return []
            case UserSpeechStarted(turn_id=turn_id, audio_playing=playing, input_offset_ms=offset):
                listening = self.predictor_decides and (self.generating is None or event.llm_listening)
                decisions = [] if listening else self._interrupt(playing)
                continued = self._left_open()
                if continued:  # the predictor kept listening at the pause: the user goes on with the same turn
                    turn_id = self.user_turn
                else:
                    self.user_turn, self.user_audio_ms, self.open_turn = turn_id, 0.0, turn_id
                self.respond_on_flush, self.speech_ended, self.flush_ms, self.answer_at_end = False, False, None, False
                self.resumed = continued
                return [*decisions, OpenUserTurn(turn_id, offset, continued)]
            case UserSpeechAudio(duration_ms=duration_ms):
                self.user_audio_ms += duration_ms
                return []
            case UserSpeechStopped():
                self.speech_ended = True
                self.respond_on_flush = self.respond_on_flush or not self.predictor_decides or self.answer_at_end
                return [FlushEncoder(self.user_turn, required=True)]
            case FlushLost():
                self.respond_on_flush = False
                return [FailSpokenTurn(self.user_turn)]
            case EncoderLost():
                if self.respond_on_flush and self.generating is None and self.user_turn is not None:
                    self.respond_on_flush = False
                    return [FailSpokenTurn(self.user_turn)]
                return []
            case Predicted():
                return self._predicted(event)
            case Flushed(turn_id=turn_id, compute_ms=compute_ms):
                if turn_id == self.user_turn:
                    self.flush_ms = compute_ms
                if self.respond_on_flush and self.generating is not None:
                    return []
                if not self.respond_on_flush:  # the predictor (if it decides) has not answered: wait for it, a while
                    left_open = self.predictor_decides and turn_id == self.user_turn and self.answered != turn_id
                    return [WaitForMore(turn_id, PATIENCE_MS)] if left_open else []
                self.respond_on_flush, self.answered = False, turn_id
                return [AnswerSpoken(turn_id, self.user_audio_ms, compute_ms)]
            case TextTyped(turn_id=turn_id, text=text, audio_playing=playing, trace_parent=parent):
                return [*self._interrupt(playing), AnswerTyped(turn_id, text, parent, event.voice_instruction)]
            case CancelRequested(audio_playing=playing):
                return self._interrupt(playing)
            case ResponseStarted(turn_id=turn_id):
                self.generating = self.playing = turn_id
                self.open_turn = None  # the response closes the LLM's user turn, whatever it answers
                return []
            case PatienceOver(turn_id=turn_id, audio_playing=playing):
                decided = self.answered == turn_id or self.backchannel_turn == turn_id
                speaking = not self.speech_ended  # the user went on with the turn: its next flush waits again
                if turn_id != self.user_turn or decided or speaking or playing or self.generating is not None:
                    return []
                return self._answer(turn_id)
            case ResponseEnded(turn_id=turn_id):
                if self.generating == turn_id:
                    self.generating = None
                return []
        raise TypeError(f"not a turn-policy event: {event!r}")

    def _left_open(self) -> bool:
        """The user turn heard last is still the LLM's open user turn: no response started since, and the trained
        predictor neither answered it nor called it a backchannel (it kept listening at a pause)."""
        return (
            self.predictor_decides
            and self.speech_ended
            and self.open_turn is not None
            and self.open_turn == self.user_turn
            and self.answered != self.user_turn
            and self.backchannel_turn != self.user_turn
            and not self.respond_on_flush
        )

    def _interrupt(self, audio_playing: bool) -> list[Decision]:
        """Barge-in or cancel: stop the last response while it generates or its audio plays."""
        turn_id, generating = self.playing, self.generating is not None
        if turn_id is None or not (generating or audio_playing):
            return []
        self.playing = self.generating = None
        return [Interrupt(turn_id, generating)]

    def _predicted(self, signal: Predicted) -> list[Decision]:
        """The trained predictor's decision on the user turn being heard (a late one for a turn already answered, or
        for an earlier turn, is ignored). `stop_speaking` and `respond` both give the user the turn: a reply still
        generating or playing stops, and the turn is answered at its end of speech (at once when that came)."""
        if not self.predictor_decides or signal.turn_id != self.user_turn or self.answered == signal.turn_id:
            return []
        if signal.stop_speaking > RESPOND_THRESHOLD:
            self.answer_at_end = True
            decisions = self._interrupt(signal.audio_playing)
            return decisions + (self._answer(signal.turn_id) if self.speech_ended else [])
        decisions: list[Decision] = []
        if signal.backchannel > RESPOND_THRESHOLD:
            self.backchannel_turn = signal.turn_id
            decisions.append(ShowBackchannel(signal.turn_id))
        if signal.respond > RESPOND_THRESHOLD and not self.respond_on_flush and not self._speaking_again():
            decisions += [*self._interrupt(signal.audio_playing), *self._answer(signal.turn_id)]
        return decisions

    def _speaking_again(self) -> bool:
        """The user went on after a pause the predictor listened through, and is still speaking. A `respond` now is
        stale where the encoder emits at the end of speech (nano's Whisper): it judged the audio before the pause, and
        answering it would start a reply over the rest of the sentence, whose audio then has no answer. That speech's
        end asks the predictor again, on the whole turn."""
        return self.resumed and not self.speech_ended

    def _answer(self, turn_id: str) -> list[Decision]:
        """Answer the user turn: at once when its flush already came, else once the flush asked for here comes."""
        if self.generating is not None or self.respond_on_flush or self.answered == turn_id:
            return []
        if self.flush_ms is not None and turn_id == self.user_turn:
            self.answered = turn_id
            return [AnswerSpoken(turn_id, self.user_audio_ms, self.flush_ms)]
        self.respond_on_flush = True
        return [FlushEncoder(turn_id, required=False)]
