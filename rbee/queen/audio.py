"""What an uploaded audio file is, and how long, from its first bytes (pure functions, no decoding).

whisper-server decodes WAV, MP3 and FLAC (miniaudio, without ffmpeg); the queen refuses anything else before
a worker is started for it. The length (for usage and limits: audio seconds) is read from a WAV's `fmt ` and
`data` chunks, a FLAC's STREAMINFO block, and an MP3's frame headers: the frame count of a Xing/Info or VBRI
header (what encoders write into the first frame of a VBR file) when there is one, else the frames summed,
header by header (a few bytes each, at most MAX_MP3_FRAMES), until the first thing that is not a frame.
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


MAX_MP3_FRAMES = 1_000_000  # 6.5 hours at 44.1 kHz; a 25 MB upload holds about 60,000 frames at 128 kbit/s

# kbit/s by bit-rate index 1-14, for (MPEG-1, layer) and (MPEG-2/2.5, layer)
_BITRATES = {
    (1, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


def _mp3_fields(data: bytes, pos: int) -> tuple[int, int, int, int] | None:
    """(version bits, layer, bit-rate index, sample-rate index) of a frame header at `pos`; None for anything
    that is not one (no sync, a reserved version or layer, free format, a bad index)."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[pos + 1] >> 3) & 3, 4 - ((data[pos + 1] >> 1) & 3)  # layer bits 01 = III
    index, rate_index = data[pos + 2] >> 4, (data[pos + 2] >> 2) & 3
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        return None
    return version, layer, index, rate_index


def _mp3_frame(data: bytes, pos: int) -> tuple[int, int, int, int] | None:
    """(frame length in bytes, samples in it, sample rate, side-info size) of the frame header at `pos`."""
    fields = _mp3_fields(data, pos)
    if fields is None:
        return None
    version, layer, index, rate_index = fields
    mpeg1, padding, mono = version == 3, (data[pos + 2] >> 1) & 1, data[pos + 3] >> 6 == 3
    bitrate = _BITRATES[(1 if mpeg1 else 2, min(layer, 2) if not mpeg1 else layer)][index - 1] * 1000
    rate = _RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate, 0
    samples = 1152 if mpeg1 or layer == 2 else 576
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return samples // 8 * bitrate // rate + padding, samples, rate, side


def _mp3_seconds(data: bytes) -> float:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2: a 28-bit "syncsafe" size, plus a footer when flagged
        pos = 10 + sum((data[6 + i] & 0x7F) << (7 * (3 - i)) for i in range(4)) + (10 if data[5] & 0x10 else 0)
    first = _mp3_frame(data, pos)
    if first is None:
        return 0.0
    _, samples, rate, side = first
    tag = pos + 4 + side
    if data[tag:tag + 4] in (b"Xing", b"Info") and struct.unpack_from(">I", data, tag + 4)[0] & 1:
        return struct.unpack_from(">I", data, tag + 8)[0] * samples / rate
    if data[pos + 36:pos + 40] == b"VBRI":
        return struct.unpack_from(">I", data, pos + 50)[0] * samples / rate
    total = 0
    for _ in range(MAX_MP3_FRAMES):
        frame = _mp3_frame(data, pos)
        if frame is None or pos + frame[0] > len(data):
            break
        total += frame[1]
        pos += frame[0]
    return total / rate


def audio_seconds(data: bytes) -> float:
    """How long the recording is, where its headers say so; 0.0 where they do not or are damaged."""
    try:
        kind = audio_kind(data)
        if kind == "mp3":
            return _mp3_seconds(data)
        return _wav_seconds(data) if kind == "wav" else _flac_seconds(data) if kind == "flac" else 0.0
    except struct.error:
        return 0.0
