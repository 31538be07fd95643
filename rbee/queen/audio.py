"""What an uploaded audio file is, and how long, from its first bytes (pure functions, no decoding).

whisper-server decodes WAV, MP3 and FLAC (miniaudio, without ffmpeg); the queen refuses anything else before
a worker is started for it. The length (for usage: audio seconds) is read from a WAV's `fmt ` and `data`
chunks and a FLAC's STREAMINFO block; an MP3's is not known without decoding its frames, so it counts 0.
"""

from __future__ import annotations

import struct

FORMATS = "WAV, MP3 or FLAC"


def audio_kind(data: bytes) -> str | None:
    """"wav", "flac" or "mp3" from the file's signature; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _wav_seconds(data: bytes) -> float:
    byte_rate, pos = 0, 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and size >= 16 and pos + 20 <= len(data):
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        elif chunk == b"data":
            size = min(size, len(data) - pos - 8)
            return size / byte_rate if byte_rate else 0.0
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return 0.0


def _flac_seconds(data: bytes) -> float:
    if len(data) < 26:  # "fLaC", a block header, and STREAMINFO's first 18 bytes
        return 0.0
    (packed,) = struct.unpack_from(">Q", data, 18)  # 20 bits rate, 3 channels, 5 bits/sample, 36 samples
    rate, samples = packed >> 44, packed & (2**36 - 1)
    return samples / rate if rate else 0.0


def audio_seconds(data: bytes) -> float:
    """How long the recording is, where its header says so; 0.0 where it does not (MP3) or is damaged."""
    try:
        kind = audio_kind(data)
        return _wav_seconds(data) if kind == "wav" else _flac_seconds(data) if kind == "flac" else 0.0
    except struct.error:
        return 0.0
