"""What an upload is and how long, from its header (rbee/queen/audio.py)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from rbee.queen import audio
from rbee.queen.audio import MAX_MP3_FRAMES, audio_kind, audio_seconds
from tests.e2e.test_audio import tone_wav

FRAME = b"\xff\xfb\x90\x00"  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz, stereo, no padding: 417 bytes, 1152 samples
FRAME_S = 1152 / 44100


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


def _frames(count: int, first: bytes = b"") -> bytes:
    return b"".join((FRAME + (first if i == 0 else b"")).ljust(417, b"\x00") for i in range(count))


def _id3(body: bytes, size: int = 300) -> bytes:
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + b"\x00" * size + body


def test_an_mp3s_length_is_its_frames_summed() -> None:
    assert audio_seconds(_frames(100)) == pytest.approx(100 * FRAME_S)
    assert audio_seconds(_id3(_frames(100))) == pytest.approx(100 * FRAME_S)  # after an ID3v2 tag
    assert audio_seconds(_frames(100) + b"TAG" + b"\x00" * 125) == pytest.approx(100 * FRAME_S)  # an ID3v1 tail
    assert audio_seconds(_frames(100)[:-10]) == pytest.approx(99 * FRAME_S)  # a frame cut short is not counted
    mpeg2 = b"".join(b"\xff\xf3\x48\xc0".ljust(144, b"\x00") for _ in range(50))  # 16 kHz, 32 kbit/s, mono
    assert audio_seconds(mpeg2) == pytest.approx(50 * 576 / 16000)


def test_an_mp3s_xing_or_vbri_header_gives_its_frame_count() -> None:
    xing = b"\x00" * 32 + b"Xing" + struct.pack(">II", 1, 5000)  # after 32 bytes of side information
    assert audio_seconds(_frames(3, xing)) == pytest.approx(5000 * FRAME_S)
    info = b"\x00" * 32 + b"Info" + struct.pack(">II", 0, 5000)  # no frame count in it: the frames are summed
    assert audio_seconds(_frames(3, info)) == pytest.approx(3 * FRAME_S)
    vbri = b"\x00" * 32 + b"VBRI" + struct.pack(">HHHII", 1, 0, 0, 1, 777)
    assert audio_seconds(_frames(2, vbri)) == pytest.approx(777 * FRAME_S)


def test_summing_mp3_frames_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_MP3_FRAMES * 417 > 25 * 2**20 * 10  # ten times what RBEE_AUDIO_MAX_MB lets in by default
    monkeypatch.setattr(audio, "MAX_MP3_FRAMES", 40)
    assert audio_seconds(_frames(50)) == pytest.approx(40 * FRAME_S)


@pytest.mark.skipif(shutil.which("lame") is None, reason="needs lame (Debian's `lame`; .ci/run installs it)")
@pytest.mark.parametrize("options", [["-b", "128"], ["-b", "128", "-t"], ["-V", "5"], ["-V", "5", "-t"],
                                     ["--resample", "16", "-b", "32", "-t"], ["--add-id3v2", "--tt", "x", "-b", "64"]])
def test_real_mp3s_from_lame_count_their_seconds(tmp_path: Path, options: list[str]) -> None:
    """CBR and VBR, with and without lame's Xing/Info frame (-t), MPEG-2 at 16 kHz, behind an ID3v2 tag."""
    (tmp_path / "in.wav").write_bytes(tone_wav(3.0))
    subprocess.run(["lame", "--quiet", *options, str(tmp_path / "in.wav"), str(tmp_path / "out.mp3")], check=True)
    data = (tmp_path / "out.mp3").read_bytes()
    assert audio_kind(data) == "mp3"
    assert 3.0 <= audio_seconds(data) <= 3.2  # lame pads the end to whole frames and adds its encoder delay


def test_unknown_or_damaged_lengths_count_zero() -> None:
    assert audio_seconds(b"ID3\x04" + b"\x00" * 64) == 0.0  # an ID3 tag and no frame after it
    assert audio_seconds(b"\xff\xff\xff\xff" + b"\x00" * 64) == 0.0  # bit-rate index 15: not a frame
    assert audio_seconds(FRAME[:3]) == 0.0
    assert audio_seconds(tone_wav(1.0)[:30]) == 0.0  # cut inside the fmt chunk
    assert audio_seconds(b"fLaC\x00") == 0.0
