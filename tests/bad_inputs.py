"""Bad uploads and bad API arguments that every Space must answer with a clear message (or, for real images in an
unusual form, with a normal result), and keep serving afterwards.

    for bad in bad_uploads():
        path = bad.write(tmp_path)           # a file named as a browser would send it
        ... the Space must refuse it (bad.refused) with an error naming one of bad.words, or answer it

Images are real photos from scikit-image, small so that the sweeps stay fast.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data


@dataclass(frozen=True)
class BadUpload:
    """One bad upload: `refused` ones must get an error mentioning one of `words` (case-insensitive); the others
    are real images in an unusual form (16-bit, RGBA, CMYK, animated, 1x1) that a Space converts and answers."""

    kind: str
    filename: str
    data: bytes
    refused: bool
    words: tuple[str, ...] = ()

    def write(self, folder: Path) -> Path:
        path = Path(folder) / f"{self.kind}-{self.filename}"
        path.write_bytes(self.data)
        return path


def photo(size: int = 64) -> Image.Image:
    """The astronaut, downscaled to `size` x `size` (RGB)."""
    return Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BILINEAR)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels and holds none: a decompression bomb's first bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def sixteen_bit_png() -> bytes:
    coins = data.coins()[::4, ::4].astype(np.uint16) * 257
    return encode(Image.fromarray(coins))  # mode I;16


def rgba_png() -> bytes:
    rgb = np.asarray(photo())
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, : rgb.shape[1] // 3] = 0
    return encode(Image.fromarray(np.dstack([rgb, alpha])))


def cmyk_jpeg() -> bytes:
    return encode(photo().convert("CMYK"), "JPEG", quality=90)


def animated_gif() -> bytes:
    frames = [photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo().rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def bad_uploads() -> list[BadUpload]:
    """Eleven kinds of upload: six refused, five converted and answered."""
    png, jpeg = encode(photo()), encode(photo(), "JPEG", quality=90)
    unreadable = ("not an image", "not a readable image", "not a usable image")
    return [
        BadUpload("text", "notes.png", b"hello, this is a shopping list, not a photo\n" * 20, True, unreadable),
        # named .pdf: Gradio's file-type check refuses it before the Space runs; the search API decodes and refuses
        BadUpload(
            "pdf",
            "scan.pdf",
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
            True,
            (*unreadable, "invalid file type"),
        ),  # fmt: skip
        BadUpload("empty", "empty.png", b"", True, ("empty",)),
        BadUpload("truncated-png", "cut.png", png[: len(png) // 2], True, unreadable),
        BadUpload("truncated-jpeg", "cut.jpg", jpeg[: len(jpeg) // 3], True, unreadable),
        BadUpload("huge", "bomb.png", png_header_only(100_000, 100_000), True, ("MP", "pixels", "downscale", "large")),
        BadUpload("one-pixel", "dot.png", encode(Image.new("RGB", (1, 1), (120, 80, 40))), False),
        BadUpload("sixteen-bit", "coins16.png", sixteen_bit_png(), False),
        BadUpload("rgba", "cutout.png", rgba_png(), False),
        BadUpload("cmyk", "print.jpg", cmyk_jpeg(), False),
        BadUpload("animated", "loop.gif", animated_gif(), False),
    ]


# API-level bad arguments shared by the Spaces (each Space adds its own wrong types and ranges).
SERVER_PATHS = ("/etc/passwd", "../../etc/passwd", "/root/.cache/huggingface/token", "file:///etc/shadow")
UNKNOWN_MODEL = "nobody/no-such-model"


def matches(message: str, words: tuple[str, ...]) -> bool:
    message = message.lower()
    return any(w.lower() in message for w in words)
