// Decodes uncompressed WAV files in JavaScript, the format that `caqe run`
// serves by default (16-bit PCM, written by caqe_core/audio.py).
//
// decodeAudioData sends each file to a decoder thread and FFmpeg. In a
// one-off measurement with the 13 files of bench/bench_mushra_page.py
// already in memory, it took 200 to 280 ms in Chromium 156 on two shared
// CPUs, and a loop like the one below 40 to 100 ms. Any file that this
// module does not handle goes to decodeAudioData.

const PCM = 1;
const IEEE_FLOAT = 3;
const EXTENSIBLE = 0xfffe;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
// Chromium multiplies in single precision by these factors. A product of a
// 16-bit integer and a single-precision factor is exact in a double, so
// storing it in a Float32Array rounds it as Chromium does.
const NEGATIVE_SCALE = 1 / 32768;
const POSITIVE_SCALE = Math.fround(1 / 32767);

/**
 * Decode a WAV file of 16-bit PCM or 32-bit float samples into an AudioBuffer
 * of `context`.
 *
 * A 16-bit sample v becomes v / 32768 below zero and v / 32767 from zero up,
 * rounded to single precision as decodeAudioData in Chromium 156 rounds it,
 * and float samples are copied unchanged. Returns null for any other file: another encoding or
 * sample size, a truncated data chunk, or a sample rate other than the
 * context's, which decodeAudioData resamples.
 *
 * @param {BaseAudioContext} context
 * @param {ArrayBuffer} bytes
 * @returns {AudioBuffer | null}
 */
export function decodeWav(context, bytes) {
  const format = readWavFormat(bytes);
  if (!format || !LITTLE_ENDIAN || format.sampleRate !== context.sampleRate) return null;
  const { encoding, channels, bitsPerSample, dataOffset, dataBytes } = format;
  const is16BitPcm = encoding === PCM && bitsPerSample === 16;
  const isFloat = encoding === IEEE_FLOAT && bitsPerSample === 32;
  if (!is16BitPcm && !isFloat) return null;

  const sampleBytes = bitsPerSample / 8;
  const frames = Math.floor(dataBytes / (channels * sampleBytes));
  if (frames === 0) return null;
  const count = frames * channels;
  // A typed array needs an offset that is a multiple of its element size.
  const aligned = dataOffset % sampleBytes === 0;
  const source = aligned ? bytes : bytes.slice(dataOffset, dataOffset + count * sampleBytes);
  const start = aligned ? dataOffset : 0;
  const samples = is16BitPcm
    ? new Int16Array(source, start, count)
    : new Float32Array(source, start, count);

  const buffer = context.createBuffer(channels, frames, format.sampleRate);
  for (let channel = 0; channel < channels; channel += 1) {
    const output = buffer.getChannelData(channel);
    if (is16BitPcm) {
      for (let frame = 0, index = channel; frame < frames; frame += 1, index += channels) {
        const value = samples[index];
        output[frame] = value * (value < 0 ? NEGATIVE_SCALE : POSITIVE_SCALE);
      }
    } else {
      for (let frame = 0, index = channel; frame < frames; frame += 1, index += channels) {
        output[frame] = samples[index];
      }
    }
  }
  return buffer;
}

// Return the encoding, layout and data chunk of a RIFF WAVE file, or null
// when the file is not one or its chunks do not fit in `bytes`.
function readWavFormat(bytes) {
  const view = new DataView(bytes);
  const ascii = (offset) =>
    String.fromCharCode(
      view.getUint8(offset),
      view.getUint8(offset + 1),
      view.getUint8(offset + 2),
      view.getUint8(offset + 3),
    );
  if (view.byteLength < 12 || ascii(0) !== "RIFF" || ascii(8) !== "WAVE") return null;

  let format = null;
  for (let offset = 12; offset + 8 <= view.byteLength; ) {
    const id = ascii(offset);
    const size = view.getUint32(offset + 4, true);
    const body = offset + 8;
    if (id === "fmt " && size >= 16 && body + size <= view.byteLength) {
      let encoding = view.getUint16(body, true);
      // WAVE_FORMAT_EXTENSIBLE names the encoding in the first two bytes of
      // its sub-format GUID.
      if (encoding === EXTENSIBLE && size >= 40) encoding = view.getUint16(body + 24, true);
      format = {
        encoding,
        channels: view.getUint16(body + 2, true),
        sampleRate: view.getUint32(body + 4, true),
        bitsPerSample: view.getUint16(body + 14, true),
      };
    } else if (id === "data") {
      if (!format || format.channels === 0 || body + size > view.byteLength) return null;
      return { ...format, dataOffset: body, dataBytes: size };
    }
    offset = body + size + (size % 2);
  }
  return null;
}
