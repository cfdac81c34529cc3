// Microphone capture on the audio thread: hands each render quantum (128 float samples of channel 0) to the page,
// which packs them into PCM16 chunks of 100 ms for the bridge. The AudioContext runs at 16 kHz, so the browser
// has already resampled the microphone to the rate the speech encoder wants.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("minmo-capture", CaptureProcessor);
