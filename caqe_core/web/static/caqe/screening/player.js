// A small Web Audio player for screening sounds: decode once, play with a gain.
//
// Screening pages need exact levels (a tone 6 dB down, a tone attenuated to
// threshold), so sounds go through a GainNode, not an <audio> element.

export class ScreeningPlayer {
  constructor() {
    this.context = null;
    this.buffers = new Map();
    this.current = null;
  }

  ensureContext() {
    if (!this.context) {
      this.context = new AudioContext();
    }
    if (this.context.state === "suspended") {
      this.context.resume();
    }
    return this.context;
  }

  async load(url) {
    if (this.buffers.has(url)) {
      return this.buffers.get(url);
    }
    const context = this.ensureContext();
    const pending = fetch(url, { credentials: "same-origin" })
      .then((response) => {
        if (!response.ok) {
          throw new Error(`The sound could not be loaded (HTTP ${response.status}). Reload the page.`);
        }
        return response.arrayBuffer();
      })
      .then((data) => context.decodeAudioData(data));
    this.buffers.set(url, pending);
    try {
      return await pending;
    } catch (error) {
      this.buffers.delete(url);
      throw error;
    }
  }

  // Play a sound; resolves when it ends or is stopped. `gainDb` scales it.
  async play(url, { loop = false, gainDb = 0 } = {}) {
    this.stop();
    const buffer = await this.load(url);
    const context = this.ensureContext();
    const source = context.createBufferSource();
    const gain = context.createGain();
    source.buffer = buffer;
    source.loop = loop;
    gain.gain.value = Math.pow(10, gainDb / 20);
    source.connect(gain).connect(context.destination);
    const ended = new Promise((resolve) => {
      source.onended = () => resolve();
    });
    this.current = { source, gain };
    source.start();
    await ended;
    if (this.current && this.current.source === source) {
      this.current = null;
    }
  }

  setGainDb(gainDb) {
    if (this.current) {
      this.current.gain.gain.setTargetAtTime(Math.pow(10, gainDb / 20), this.context.currentTime, 0.01);
    }
  }

  stop() {
    if (this.current) {
      const { source } = this.current;
      this.current = null;
      try {
        source.stop();
      } catch (error) {
        // A source that has not started or already ended cannot be stopped again.
      }
    }
  }

  get playing() {
    return this.current !== null;
  }
}
