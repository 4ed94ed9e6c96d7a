"""Writes an audio file of one sine tone with PyAV (FFmpeg), to hand to Convoy as music.

The container and codec follow the extension of --out: .opus (Ogg Opus, libopus), .mp3
(libmp3lame), .flac, .m4a (AAC in MP4), .webm (WebM Opus), .ogg (Vorbis). The tone is the same on both channels.
"""

import argparse
import fractions

import av
import numpy as np

CODECS = {
    ".opus": ("ogg", "libopus", 48000, "s16"),
    ".mp3": ("mp3", "libmp3lame", 44100, "s16p"),
    ".flac": ("flac", "flac", 44100, "s16"),
    ".m4a": ("mp4", "aac", 44100, "fltp"),
    ".webm": ("webm", "libopus", 48000, "s16"),
    # FFmpeg's own Vorbis encoder (the build has no libvorbis) is marked experimental.
    ".ogg": ("ogg", "vorbis", 44100, "fltp"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hz", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--amplitude", type=float, default=0.4)
    args = ap.parse_args()

    ext = args.out[args.out.rfind(".") :]
    fmt, codec, rate, sample_fmt = CODECS[ext]
    out = av.open(args.out, "w", format=fmt)
    stream = out.add_stream(codec, rate=rate)
    stream.layout = "stereo"
    if codec == "vorbis":
        stream.codec_context.options = {"strict": "experimental"}
    n = int(args.seconds * rate)
    t = np.arange(n) / rate
    tone = (args.amplitude * np.sin(2 * np.pi * args.hz * t)).astype(np.float32)
    chunk = 1024
    for start in range(0, n, chunk):
        part = tone[start : start + chunk]
        if sample_fmt == "s16":
            data = np.repeat((part * 32767).astype(np.int16), 2).reshape(1, -1)
        elif sample_fmt == "s16p":
            data = np.vstack([(part * 32767).astype(np.int16)] * 2)
        else:
            data = np.vstack([part, part])
        frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = fractions.Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()


if __name__ == "__main__":
    main()
