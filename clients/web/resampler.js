// Streaming sample-rate conversion and PCM16 packing for the browser client (ES module, no dependencies).
//
// StreamingResampler converts blocks of float samples from the AudioContext's rate (44.1 or 48 kHz) to 16 kHz with
// a windowed-sinc low-pass interpolator. It keeps its history and fractional position between blocks, so
// converting a signal in 128-sample blocks gives the same output as converting it in one piece. Output sample n
// is the band-limited input at time n * inRate / outRate (no added delay beyond the kernel's look-ahead).

const TWO_PI = 2 * Math.PI;

/** Blackman window on [-1, 1]. */
function blackman(u) {
  return 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(TWO_PI * u);
}

export class StreamingResampler {
  /**
   * @param {number} inRate input sample rate in Hz
   * @param {number} outRate output sample rate in Hz
   * @param {{zeroCrossings?: number, phases?: number, rolloff?: number}} options kernel half-width in zero
   *   crossings of the low-pass (24), table resolution per input sample (128), cutoff as a fraction of the lower
   *   Nyquist frequency (0.92). At 48 kHz → 16 kHz: flat to 6.5 kHz, -1 dB at 7 kHz, -43 dB at 8 kHz, below
   *   -78 dB from 8.5 kHz (where aliases would land in the speech band).
   */
  constructor(inRate, outRate, { zeroCrossings = 24, phases = 128, rolloff = 0.92 } = {}) {
    if (!(inRate > 0 && outRate > 0)) throw new RangeError('sample rates must be positive');
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples per output sample
    const scale = Math.min(1, outRate / inRate); // cutoff relative to the input's Nyquist frequency
    this.cutoff = 0.5 * scale * rolloff; // cycles per input sample
    this.halfWidth = Math.ceil(zeroCrossings / (2 * this.cutoff)); // in input samples
    this.phases = phases;
    // kernel table over [0, halfWidth] (it is symmetric), `phases` entries per input sample, plus a guard entry
    const size = this.halfWidth * phases + 2;
    this.table = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / phases;
      const u = x / this.halfWidth;
      if (u >= 1) continue;
      const arg = TWO_PI * this.cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
      this.table[i] = 2 * this.cutoff * sinc * blackman(u);
    }
    this.reset();
  }

  /** Forget all input: the next sample starts a new signal at time 0. */
  reset() {
    this.history = new Float32Array(this.halfWidth); // zeros before the first sample
    this.historyStart = -this.halfWidth; // absolute input index of history[0]
    this.produced = 0; // output samples produced so far
    this.received = 0; // input samples received so far
  }

  _kernel(x) {
    const pos = Math.abs(x) * this.phases;
    const i = Math.floor(pos);
    if (i >= this.table.length - 1) return 0;
    const frac = pos - i;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * frac;
  }

  /**
   * Convert one block; returns the output samples that are complete so far (possibly none).
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  process(input) {
    this.received += input.length;
    const buf = new Float32Array(this.history.length + input.length);
    buf.set(this.history, 0);
    buf.set(input, this.history.length);
    const bufEnd = this.historyStart + buf.length; // absolute index one past the newest sample
    const out = [];
    for (;;) {
      const t = this.produced * this.step; // absolute input time of the next output sample
      const last = Math.floor(t + this.halfWidth);
      if (last >= bufEnd) break;
      const first = Math.max(this.historyStart, Math.ceil(t - this.halfWidth));
      let acc = 0;
      for (let k = first; k <= last; k++) acc += buf[k - this.historyStart] * this._kernel(t - k);
      out.push(acc); // unity gain: the kernel sums to 1 over the input grid
      this.produced++;
    }
    // keep what the next output still needs
    const keepFrom = Math.max(this.historyStart, Math.ceil(this.produced * this.step - this.halfWidth));
    this.history = buf.slice(keepFrom - this.historyStart);
    this.historyStart = keepFrom;
    return Float32Array.from(out);
  }

  /** Output the tail held back for look-ahead (as if silence followed), then reset. */
  flush() {
    const received = this.received;
    const due = Math.ceil(received / this.step) - this.produced; // outputs at times before the input's end
    const tail = this.process(new Float32Array(this.halfWidth + Math.ceil(this.step) + 1));
    this.reset();
    return tail.slice(0, Math.max(0, due));
  }
}

/**
 * Floats in [-1, 1] → little-endian signed 16-bit PCM (clipped, rounded).
 * @param {Float32Array} samples
 * @returns {Int16Array}
 */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
  }
  return out;
}
