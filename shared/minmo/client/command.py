"""`minmo chat`: build the request from the command line, run it, and print, save and grade the result.

Kept out of `minmo.cli` so the command there stays a list of options. Exit codes: 0 when the reply is
complete and the server reported no error, 1 otherwise, 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from minmo.audio.pcm import PCM16_BYTES
from minmo.client.chat import ChatRequest, ChatResult, run_chat
from minmo.client.console import ConsoleRenderer
from minmo.client.mic import NoAudioDevice, run_mic
from minmo.client.session import SessionError
from minmo.client.wav import MS_PER_S, AudioFileError, load_wav, write_wav

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad input on the command line (a file that is not audio), like typer's own usage errors
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


@dataclass(frozen=True)
class ChatOptions:
    """The command line of `minmo chat`."""

    server: str
    wav: Path | None
    text: str | None
    out: Path | None
    realtime: bool
    as_json: bool
    system_prompt: str
    voice_instruction: str
    timeout_s: float
    mic: bool = False
    tls_ca: Path | None = None  # PEM of the server certificate's CA: connect over TLS
    api_key: str | None = None
    voice_prompt: Path | None = None  # WAV of the voice to mimic (sent in the session config)


def chat_command(options: ChatOptions) -> int:
    """Run one conversation and return the process exit code."""
    if (options.wav is not None) + (options.text is not None) + options.mic != 1:
        raise typer.BadParameter("give exactly one of --mic, --wav or --text")
    stdout, stderr = Console(), Console(stderr=True)
    if options.mic:
        if options.voice_prompt is not None:
            raise typer.BadParameter("--voice-prompt goes with --wav or --text (not yet with --mic)")
        return _live(options, stderr)
    try:
        request = _request(options)
    except AudioFileError as error:
        if options.as_json:
            typer.echo(json.dumps({"session_id": "", "turns": [], "error": str(error)}))
        stderr.print(f"error: {error}", style="bold red", markup=False, soft_wrap=True)
        return EXIT_USAGE
    on_event = None if options.as_json else ConsoleRenderer(stdout)
    try:
        on_waiting = None if options.as_json else lambda line: stderr.print(line, style="dim", markup=False)
        tls_ca = options.tls_ca.read_bytes() if options.tls_ca is not None else None
        result = asyncio.run(run_chat(options.server, request, on_event, on_waiting, tls_ca, options.api_key))
    except KeyboardInterrupt:
        stderr.print("interrupted: the call was cancelled", style="yellow")
        return EXIT_INTERRUPTED
    if options.out is not None:
        _save_audio(options.out, result, stderr if options.as_json else stdout)
    if options.as_json:
        typer.echo(json.dumps(result.to_json()))
    problems = result.problems()
    for problem in problems:
        stderr.print(f"error: {problem}", style="bold red", markup=False, soft_wrap=True)
    return EXIT_FAILED if problems else EXIT_OK


def _live(options: ChatOptions, stderr: Console) -> int:
    """`--mic`: a live conversation until Ctrl-C; no microphone or no server is one line and exit code 1."""
    try:
        asyncio.run(run_mic(options.server, options.system_prompt, options.voice_instruction, options.timeout_s))
    except KeyboardInterrupt:
        return EXIT_OK
    except (NoAudioDevice, SessionError) as error:
        stderr.print(f"error: {error}", style="bold red", markup=False, soft_wrap=True)
        return EXIT_FAILED
    return EXIT_OK


def _request(options: ChatOptions) -> ChatRequest:
    return ChatRequest(
        audio=load_wav(options.wav) if options.wav is not None else None,
        text=options.text,
        system_prompt=options.system_prompt,
        voice_instruction=options.voice_instruction,
        voice_prompt=load_wav(options.voice_prompt) if options.voice_prompt is not None else None,
        realtime=options.realtime,
        timeout_s=options.timeout_s,
    )


def _save_audio(path: Path, result: ChatResult, console: Console) -> None:
    """Write the assistant's speech of every turn, back to back, at the rate the server sent it."""
    pcm, rate = result.assistant_audio()
    if not pcm:
        console.print(f"no assistant audio received; {path} not written", markup=False)
        return
    write_wav(path, pcm, rate)
    console.print(f"wrote {path} ({len(pcm) // PCM16_BYTES * MS_PER_S // rate} ms at {rate} Hz)", markup=False)
