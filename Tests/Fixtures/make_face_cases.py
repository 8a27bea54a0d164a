"""Writes the photos `pidiff-data face` must handle: two people side by side, a tiny face, a
photo without a face, a file that is not an image, and a huge image (by its header).

usage: make_face_cases.py OBAMA_JPEG BIDEN_JPEG OUT_DIR
"""
import os
import struct
import sys
import zlib

from PIL import Image


def main() -> None:
    obama_path, biden_path, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    obama = Image.open(obama_path).convert("RGB")
    biden = Image.open(biden_path).convert("RGB")
    h = 600
    a = obama.resize((obama.width * h // obama.height, h))
    b = biden.resize((biden.width * h // biden.height, h))
    pair = Image.new("RGB", (a.width + b.width, h), "white")
    pair.paste(a, (0, 0))
    pair.paste(b, (a.width, 0))
    pair.save(os.path.join(out, "two_people.jpg"), quality=92)
    # A small face: detectable, but far below the 100 px face-size gate.
    obama.resize((obama.width // 6, obama.height // 6)).save(os.path.join(out, "tiny_face.jpg"), quality=95)
    Image.new("RGB", (400, 300), (90, 140, 200)).save(os.path.join(out, "sky.png"))
    with open(os.path.join(out, "notes.jpg"), "w") as f:
        f.write("not an image\n")
    # A valid PNG header claiming 40000 x 40000 pixels: refused before decoding.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    with open(os.path.join(out, "huge.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
