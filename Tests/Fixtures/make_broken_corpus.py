"""Writes a corpus of awkward and broken image files into identity folders, for ingest's
robustness tests. Each file's name says what it is; the test asserts each outcome.

usage: make_broken_corpus.py SAMPLE_JPEG OUT_DIR
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main() -> None:
    sample, out = sys.argv[1], sys.argv[2]
    good = open(sample, "rb").read()
    face = Image.open(sample).convert("RGB")
    person = os.path.join(out, "person")
    odd = os.path.join(out, "odd")
    os.makedirs(person, exist_ok=True)
    os.makedirs(odd, exist_ok=True)

    def put(folder: str, name: str, data: bytes) -> None:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)

    def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    # Broken: each must be recorded with a reason, never crash the run.
    put(odd, "truncated.jpg", good[: len(good) // 3])
    png = encoded(face, "PNG")
    put(odd, "corrupt.png", png[:60] + bytes(b ^ 0x5A for b in png[60:4000]) + png[4000:])
    put(odd, "zero.jpg", b"")
    put(odd, "not_an_image.jpg", b"this is a text file, not a photo\n" * 20)
    put(odd, "tiny.png", encoded(face.resize((32, 32)), "PNG"))
    # A 60000×60000 PNG declared in a tiny, valid file: refused from the header.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    put(odd, "bomb.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    # Faceless but valid.
    grad = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    put(odd, "no_face.jpg", encoded(Image.fromarray(np.stack([grad] * 3, axis=-1)), "JPEG", quality=90))

    # Awkward but valid: each still contains the face.
    put(person, "cmyk.jpg", encoded(face.convert("CMYK"), "JPEG", quality=92))
    put(person, "gray.jpg", encoded(face.convert("L"), "JPEG", quality=92))
    rgba = face.convert("RGBA")
    put(person, "rgba.png", encoded(rgba, "PNG"))
    arr16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257)
    put(person, "gray16.png", encoded(Image.fromarray(arr16), "PNG"))
    rotated = face.rotate(90, expand=True)  # stored sideways, EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6
    put(person, "exif_rotated.jpg", encoded(rotated, "JPEG", quality=92, exif=exif.tobytes()))
    put(person, "webp.webp", encoded(face, "WEBP", quality=90))
    put(person, "bitmap.bmp", encoded(face, "BMP"))
    put(person, "name with spaces 'quotes' \"double\" ünïcödé 名前.jpg", good)

    # Links: dangling, a file loop and a directory loop.
    os.symlink("does_not_exist.jpg", os.path.join(odd, "dangling.jpg"))
    os.symlink("loop_b.jpg", os.path.join(odd, "loop_a.jpg"))
    os.symlink("loop_a.jpg", os.path.join(odd, "loop_b.jpg"))
    os.symlink("..", os.path.join(person, "dir_loop"))

    # A photo beside the identity folders: it has no identity.
    put(out, "loose.jpg", good)

    # Names that are not UTF-8 (Latin-1 bytes): an identity folder and a photo.
    os.mkdir(os.path.join(out.encode(), b"caf\xe9"))
    with open(os.path.join(out.encode(), b"caf\xe9", b"photo.jpg"), "wb") as f:
        f.write(good)
    with open(os.path.join(person.encode(), b"bad\xff\xfename.jpg"), "wb") as f:
        f.write(good)


if __name__ == "__main__":
    main()
