"""What an upload is and how long, from its header (rbee/queen/audio.py)."""

from __future__ import annotations

import struct

import pytest

from rbee.queen.audio import audio_kind, audio_seconds
from tests.e2e.test_audio import tone_wav


def _flac(rate: int, samples: int) -> bytes:
    packed = (rate << 44) | (0 << 41) | (15 << 36) | samples  # mono, 16 bits
    return b"fLaC" + b"\x00\x00\x00\x22" + b"\x10\x00\x10\x00" + b"\x00" * 6 + struct.pack(">Q", packed) + b"\x00" * 16


def test_wav_flac_and_mp3_are_audio_and_the_rest_is_not() -> None:
    assert audio_kind(tone_wav(0.1)) == "wav"
    assert audio_kind(_flac(16000, 16000)) == "flac"
    assert audio_kind(b"ID3\x04\x00" + b"\x00" * 32) == "mp3" and audio_kind(b"\xff\xfb\x90\x64" + b"\x00" * 8) == "mp3"
    for other in (b"", b"OggS\x00\x02", b"%PDF-1.7", b"plain text", b"RIFF\x00\x00\x00\x00AVI "):
        assert audio_kind(other) is None


@pytest.mark.parametrize("seconds", [0.25, 1.0, 3.5])
def test_a_wavs_length_comes_from_its_chunks(seconds: float) -> None:
    assert audio_seconds(tone_wav(seconds)) == pytest.approx(seconds)
    assert audio_seconds(tone_wav(seconds, rate=22050)) == pytest.approx(seconds, abs=1e-4)


def test_a_flacs_length_comes_from_streaminfo() -> None:
    assert audio_seconds(_flac(16000, 40000)) == pytest.approx(2.5)


def test_unknown_or_damaged_lengths_count_zero() -> None:
    assert audio_seconds(b"ID3\x04" + b"\x00" * 64) == 0.0  # an MP3: not known without decoding
    assert audio_seconds(tone_wav(1.0)[:30]) == 0.0  # cut inside the fmt chunk
    assert audio_seconds(b"fLaC\x00") == 0.0
