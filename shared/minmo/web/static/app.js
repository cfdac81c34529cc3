// The MinMo page: microphone -> PCM16 16 kHz -> WebSocket bridge -> Converse; replies play as they stream.
// The message protocol is described in minmo/web/bridge.py. `window.minmo` holds what happened (events, audio
// received and played), for a person in the console and for the browser test.
"use strict";

const INPUT_RATE = 16000; // the speech encoder's rate: the capture AudioContext resamples the microphone to it
const OUTPUT_RATE = 24000; // the vocoder's rate: replies arrive at it and play without resampling
const SERVER_INPUT_RATES = [8000, 16000, 24000, 48000]; // what SessionConfig.input_sample_rate_hz accepts
const POSITION_EVERY_MS = 200; // PlaybackPosition while a reply plays (the API asks for every 100-250 ms)
const START_DELAY_S = 0.05; // scheduling slack before the first chunk of a reply

const state = (window.minmo = {
  status: "idle",
  sessionId: null,
  events: [], // every ServerEvent but audio, as the bridge sent it
  turnEvents: [], // TurnEvent types in order
  audioChunks: 0,
  audioReceivedMs: 0,
  playbackStops: 0, // replies whose playback was cut short (barge-in or interruption)
  errors: [],
  latency: null, // the last LatencyReport
});

const $ = (id) => document.getElementById(id);
let ws = null;
let captureCtx = null;
let playCtx = null;
let micStream = null;
let micRate = INPUT_RATE; // the rate sent to the server
let micStep = 1; // capture samples per sent sample (linear resampling when the browser will not capture at 16 kHz)
let micPhase = 0;
let micSamples = new Int16Array(INPUT_RATE / 10);
let micFill = 0;
let audioHeader = null; // the header of the binary frame that comes next
let playback = null; // {turnId, startTime, nextTime, sources, timer}
const lines = new Map(); // turn_id -> transcript line element

function setStatus(text) {
  state.status = text;
  $("status").textContent = text;
}

function line(turnId, role) {
  if (!lines.has(turnId)) {
    const element = document.createElement("div");
    element.className = `line ${role}`;
    element.dataset.turnId = turnId;
    element.innerHTML = `<span class="who">${role === "user" ? "you" : "MinMo"}</span><span class="text"></span>`;
    $("transcript").appendChild(element);
    lines.set(turnId, element);
  }
  return lines.get(turnId);
}

function note(turnId, text, className = "note") {
  const element = document.createElement("div");
  element.className = className;
  element.textContent = text;
  (turnId && lines.has(turnId) ? lines.get(turnId) : $("transcript")).appendChild(element);
}

function showError(message) {
  state.errors.push(message);
  note(null, message, "error");
  setStatus("error");
}

// --- microphone ------------------------------------------------------------------------------------------------

// Capture at 16 kHz where the browser resamples for us (Chromium); otherwise (Firefox refuses a microphone in a
// context at another rate) at the device's rate, sent as it is when the server takes it, else resampled here.
async function startMicrophone() {
  const constraints = { audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } };
  micStream = await navigator.mediaDevices.getUserMedia(constraints);
  let source;
  try {
    captureCtx = new AudioContext({ sampleRate: INPUT_RATE });
    source = captureCtx.createMediaStreamSource(micStream);
  } catch (error) {
    if (captureCtx) captureCtx.close();
    captureCtx = new AudioContext();
    source = captureCtx.createMediaStreamSource(micStream);
  }
  micRate = SERVER_INPUT_RATES.includes(captureCtx.sampleRate) ? captureCtx.sampleRate : INPUT_RATE;
  micStep = captureCtx.sampleRate / micRate;
  micSamples = new Int16Array(micRate / 10); // 100 ms per AudioChunk
  await captureCtx.audioWorklet.addModule("/static/capture-worklet.js");
  const capture = new AudioWorkletNode(captureCtx, "minmo-capture");
  const mute = captureCtx.createGain(); // keeps the worklet pulled by the graph without playing the microphone
  mute.gain.value = 0;
  capture.port.onmessage = (message) => onMicSamples(message.data);
  source.connect(capture).connect(mute).connect(captureCtx.destination);
}

// micPhase: where the next sent sample lies, in capture samples from samples[0] (linear interpolation between
// neighbours; with micStep 1 every sample is sent as it is).
function onMicSamples(samples) {
  for (; micPhase <= samples.length - 1; micPhase += micStep) {
    const index = Math.floor(micPhase);
    const fraction = micPhase - index;
    const value = fraction === 0 ? samples[index] : samples[index] * (1 - fraction) + samples[index + 1] * fraction;
    const clipped = Math.max(-1, Math.min(1, value));
    micSamples[micFill++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (micFill === micSamples.length) {
      if (ws && ws.readyState === WebSocket.OPEN && state.sessionId) ws.send(micSamples.buffer);
      micSamples = new Int16Array(micSamples.length);
      micFill = 0;
    }
  }
  micPhase -= samples.length; // carry the position into the next quantum
}

// --- playback --------------------------------------------------------------------------------------------------

function playedMs() {
  if (!playback) return 0;
  const end = Math.min(playCtx.currentTime, playback.nextTime);
  return Math.max(0, (end - playback.startTime) * 1000);
}

function sendPosition() {
  if (playback && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "playback_position", turn_id: playback.turnId, played_ms: playedMs() }));
  }
}

function play(header, data) {
  const pcm = new Int16Array(data);
  if (pcm.length === 0) return;
  const buffer = playCtx.createBuffer(1, pcm.length, header.sample_rate_hz);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 0x8000;
  if (!playback || playback.turnId !== header.turn_id) {
    stopPlayback(false);
    const startTime = playCtx.currentTime + START_DELAY_S;
    playback = { turnId: header.turn_id, startTime, nextTime: startTime, sources: [], timer: null };
    playback.timer = setInterval(() => {
      sendPosition();
      if (playCtx.currentTime >= playback.nextTime) finishPlayback();
    }, POSITION_EVERY_MS);
  }
  const source = playCtx.createBufferSource();
  source.buffer = buffer;
  source.connect(playCtx.destination);
  source.start(Math.max(playback.nextTime, playCtx.currentTime));
  playback.nextTime = Math.max(playback.nextTime, playCtx.currentTime) + buffer.duration;
  playback.sources.push(source);
  state.audioChunks += 1;
  state.audioReceivedMs += (1000 * pcm.length) / header.sample_rate_hz;
}

function finishPlayback() {
  if (!playback) return;
  clearInterval(playback.timer);
  sendPosition();
  playback = null;
}

// Stop the reply now (the user spoke over it): silence every scheduled chunk and tell the server what was heard.
function stopPlayback(cut = true) {
  if (!playback) return;
  const stillPlaying = playCtx.currentTime < playback.nextTime;
  playback.nextTime = Math.min(playback.nextTime, playCtx.currentTime); // freezes playedMs at this moment
  for (const source of playback.sources) source.stop();
  if (cut && stillPlaying) state.playbackStops += 1;
  finishPlayback();
}

// --- server events ---------------------------------------------------------------------------------------------

function onTurnEvent(event) {
  const type = event.type;
  state.turnEvents.push(type);
  if (type === "USER_SPEECH_STARTED") {
    stopPlayback(); // barge-in: the server cancels the reply too; the page stops it at once
    const text = line(event.turn_id, "user").querySelector(".text"); // in order; the transcript fills it later
    text.textContent = "…";
    text.classList.add("interim");
    setStatus("hearing you");
  } else if (type === "USER_SPEECH_STOPPED") {
    setStatus("thinking");
  } else if (type === "RESPONSE_STARTED") {
    line(event.turn_id, "assistant");
    setStatus("answering");
  } else if (type === "RESPONSE_INTERRUPTED") {
    if (playback && playback.turnId === event.turn_id) stopPlayback();
    note(event.turn_id, `interrupted after ${Number(event.heard_ms || 0)} ms heard`);
    setStatus("listening");
  } else if (type === "RESPONSE_DONE") {
    if (event.end_reason === "MAX_TOKENS") note(event.turn_id, "(cut: the reply reached the server's length cap)");
    if (event.end_reason === "FAILED") note(event.turn_id, "(the reply failed; see the error)");
    setStatus("listening");
  }
}

function onTranscript(transcript) {
  const role = transcript.role === "ROLE_USER" ? "user" : "assistant";
  const element = line(transcript.turn_id, role).querySelector(".text");
  const text = transcript.text || "";
  if (transcript.is_final) {
    element.textContent = text;
    element.classList.remove("interim");
  } else {
    element.textContent += text;
    element.classList.add("interim");
  }
}

function onLatency(report) {
  state.latency = report;
  const body = $("latency").querySelector("tbody");
  body.innerHTML = "";
  for (const [name, value] of Object.entries(report)) {
    if (!name.endsWith("_ms")) continue;
    const row = body.insertRow();
    row.insertCell().textContent = name.replace(/_ms$/, "").replaceAll("_", " ");
    row.insertCell().textContent = Number(value).toFixed(1);
  }
}

function onEvent(event) {
  state.events.push(event);
  if (event.session_started) {
    state.sessionId = event.session_started.session_id;
    setStatus("listening");
  } else if (event.turn_event) {
    onTurnEvent(event.turn_event);
  } else if (event.transcript) {
    onTranscript(event.transcript);
  } else if (event.latency_report) {
    onLatency(event.latency_report);
  } else if (event.error) {
    showError(`${event.error.code}: ${event.error.message}`);
  }
}

function onMessage(message) {
  if (typeof message.data !== "string") {
    if (audioHeader) play(audioHeader, message.data);
    audioHeader = null;
    return;
  }
  const parsed = JSON.parse(message.data);
  if (parsed.type === "audio") audioHeader = parsed;
  else if (parsed.type === "event") onEvent(parsed.event);
  else if (parsed.type === "error") showError(parsed.message);
}

// --- controls --------------------------------------------------------------------------------------------------

async function start() {
  $("start").disabled = true;
  setStatus("connecting");
  try {
    playCtx = new AudioContext({ sampleRate: OUTPUT_RATE });
    await startMicrophone();
  } catch (error) {
    showError(`no microphone: ${error.message}`);
    $("start").disabled = false;
    return;
  }
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(
      JSON.stringify({
        type: "start",
        input_sample_rate_hz: micRate,
        output_sample_rate_hz: OUTPUT_RATE,
        system_prompt: $("system-prompt").value,
        voice_instruction: $("voice-instruction").value,
      }),
    );
  };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    if (state.status !== "error") setStatus("not connected");
    state.sessionId = null;
    $("start").disabled = false;
    for (const id of ["stop", "text", "send"]) $(id).disabled = true;
  };
  for (const id of ["stop", "text", "send"]) $(id).disabled = false;
}

function stop() {
  stopPlayback(false);
  if (ws) ws.close();
  if (micStream) for (const track of micStream.getTracks()) track.stop();
  if (captureCtx) captureCtx.close();
  if (playCtx) playCtx.close();
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  stopPlayback(); // the server shows the typed turn back as the user's transcript
  ws.send(JSON.stringify({ type: "text", text }));
  $("text").value = "";
});
