// AudioWorklet processor "pcm16-writer": microphone audio → 16 kHz mono PCM16 chunks posted to the page.
//
// Runs on the audio rendering thread. Each 128-frame block is mixed to mono, resampled from the context's rate
// (the global `sampleRate`) to `targetRate` by a StreamingResampler that keeps its state across blocks, packed to
// PCM16 and collected into chunks of `chunkMs`. Each full chunk is posted as {type: "audio", pcm: ArrayBuffer,
// level: RMS in [0, 1]} with its buffer transferred. Posting "flush" to the port sends the partial chunk and
// the resampler's tail, then {type: "flushed"}.

import { StreamingResampler, floatToPcm16 } from './resampler.js';

class Pcm16Writer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, chunkMs = 100 } = (options && options.processorOptions) || {};
    this.resampler = new StreamingResampler(sampleRate, targetRate);
    this.chunk = new Int16Array(Math.round((targetRate * chunkMs) / 1000));
    this.fill = 0;
    this.sumSquares = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === 'flush') {
        this.write(this.resampler.flush());
        this.post(this.fill);
        this.port.postMessage({ type: 'flushed' });
        this.stopped = true;
      }
    };
  }

  write(samples) {
    const pcm = floatToPcm16(samples);
    for (let i = 0; i < pcm.length; i++) {
      this.chunk[this.fill++] = pcm[i];
      this.sumSquares += samples[i] * samples[i];
      if (this.fill === this.chunk.length) this.post(this.fill);
    }
  }

  post(length) {
    if (length === 0) return;
    const pcm = this.chunk.slice(0, length).buffer;
    const level = Math.sqrt(this.sumSquares / length);
    this.port.postMessage({ type: 'audio', pcm, level }, [pcm]);
    this.fill = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(mono.length);
        for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
      }
      this.write(this.resampler.process(mono));
    }
    return true;
  }
}

registerProcessor('pcm16-writer', Pcm16Writer);
