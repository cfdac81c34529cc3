"""Human-readable output for `minmo chat`: one line per event as it arrives, and a latency table per turn.

The assistant's text streams inline, so that a person sees it grow the way the audio would play. Any other
event ends that line first, so lines never interleave.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from minmo.client.chat import LatencyMs
from minmo.client.wav import MS_PER_S
from minmo.v1 import common_pb2, conversation_pb2

TurnType = conversation_pb2.TurnEvent.Type
EndReason = conversation_pb2.TurnEvent.EndReason
_END_NOTES = {
    EndReason.MAX_TOKENS: " (cut: the reply reached the server's length cap, MINMO_MAX_RESPONSE_TOKENS)",
    EndReason.FAILED: " (failed: see the error above)",
}

_TURN_LINES = {
    TurnType.USER_SPEECH_STARTED: ("▶ user speech started", "cyan"),
    TurnType.USER_SPEECH_STOPPED: ("■ user speech stopped", "cyan"),
    TurnType.RESPONSE_STARTED: ("▶ response started", "magenta"),
    TurnType.RESPONSE_DONE: ("✓ response done", "green"),
    TurnType.RESPONSE_INTERRUPTED: ("✗ response interrupted", "yellow"),
    TurnType.BACKCHANNEL: ("~ backchannel", "dim"),
}


class ConsoleRenderer:
    """An `on_event` callback for `run_chat` that prints each ServerEvent to a rich console."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._streaming: str | None = None  # the response whose text is being printed inline

    def __call__(self, event: conversation_pb2.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "session_started":
            self._on_session_started(event.session_started)
        elif kind == "turn_event":
            self._on_turn_event(event.turn_event)
        elif kind == "transcript":
            self._on_transcript(event.transcript)
        elif kind == "latency_report":
            self._on_latency(event.latency_report)
        elif kind == "error":
            self._line(Text(f"error {event.error.code}: {event.error.message}", style="bold red"))

    def _end_inline(self) -> None:
        """Finish the line of streamed assistant text, if one is open."""
        if self._streaming is not None:
            self._console.print()
            self._streaming = None

    def _line(self, text: Text) -> None:
        self._end_inline()
        self._console.print(text)

    def _on_session_started(self, started: conversation_pb2.SessionStarted) -> None:
        rates = f"{started.input_format.sample_rate_hz} Hz in, {started.output_format.sample_rate_hz} Hz out"
        self._line(Text(f"session {started.session_id} started ({rates})", style="bold"))

    def _on_turn_event(self, event: conversation_pb2.TurnEvent) -> None:
        label, style = _TURN_LINES.get(event.type, (TurnType.Name(event.type), "dim"))
        line = Text(label, style=style)
        if event.type in (TurnType.USER_SPEECH_STARTED, TurnType.USER_SPEECH_STOPPED):
            line.append(f" at {event.input_offset_ms / MS_PER_S:.2f} s")
        if event.type == TurnType.RESPONSE_INTERRUPTED:
            line.append(f" after {event.heard_ms} ms heard: {event.heard_text!r}")
        line.append(_END_NOTES.get(event.end_reason, ""))
        self._line(line)

    def _on_transcript(self, transcript: conversation_pb2.Transcript) -> None:
        if transcript.role == common_pb2.ROLE_USER:
            if transcript.is_final:
                self._line(Text.assemble(("user: ", "bold cyan"), transcript.text))
        elif transcript.is_final and self._streaming == transcript.turn_id:
            self._end_inline()
        elif transcript.is_final:
            self._line(Text.assemble(("assistant: ", "bold magenta"), transcript.text))
        else:
            if self._streaming != transcript.turn_id:
                self._end_inline()
                self._console.print(Text("assistant: ", style="bold magenta"), end="")
                self._streaming = transcript.turn_id
            self._console.print(Text(transcript.text), end="", soft_wrap=True)

    def _on_latency(self, report: conversation_pb2.LatencyReport) -> None:
        table = Table(title=f"latency of {report.turn_id}", caption=f"trace {report.trace_id or '-'}")
        table.add_column("hop")
        table.add_column("ms", justify="right")
        for name, value in LatencyMs.from_proto(report).measured().items():
            table.add_row(name.replace("_", " "), f"{value:.1f}")
        self._end_inline()
        self._console.print(table)
