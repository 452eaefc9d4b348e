#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (standard library only).

fuzz/corpus/upload/  multipart/form-data bodies for the `upload` target, with the boundary that
                     fuzz_targets/upload.rs sets in the request's content type: an ordinary
                     request from the sample photos, and hostile ones (huge or elongated
                     images whose headers lie about their size, truncated or unsupported
                     images, empty, duplicated, unknown and mislabelled parts).
fuzz/corpus/jobs/    `POST /v1/jobs` bodies for the `jobs` target: the image parts with the job's
                     text fields, ordinary and hostile (bad priorities, qualities and formats,
                     metadata over its bound, webhook URLs inside and outside the allow list,
                     duplicated fields).
fuzz/corpus/image/   single images for the `image` target.

Usage: python3 fuzz/make_corpus.py   (from anywhere; rewrites both folders)
"""

import os
import shutil
import struct
import zlib

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
SAMPLES = os.path.join(ROOT, "assets", "samples")
BOUNDARY = b"vfFuzzBoundary7MA4YWxkTrZu0gW"

# The smallest pair listed in assets/samples/pairs.txt; the photos are already 192x256 JPEGs
# of a few KB, so they go in as they are.
PERSON = os.path.join(SAMPLES, "person", "000066_0.jpg")
CLOTH = os.path.join(SAMPLES, "cloth", "017575_1.jpg")
CLOTH_MASK = os.path.join(SAMPLES, "cloth-mask", "017575_1.jpg")

# A 1x1 lossless WebP.
WEBP_1X1 = bytes.fromhex(
    "524946461a000000574542505650384c0d0000002f00000010071011118888fe0700"
)
GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- PNG -------------------------------------------------------------------------------------

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def ihdr(width, height, depth, color, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace))


def row_bytes(width, depth, color):
    return (width * depth * CHANNELS[color] + 7) // 8


def zeros_idat(width, height, depth, color):
    """The image data of an all-zero (black) non-interlaced image, compressed as it is
    generated, so that a 36,000,000x1 image costs a few KB and little memory here."""
    row = b"\x00" * (1 + row_bytes(width, depth, color))
    z = zlib.compressobj(9)
    out = []
    step = max(1, (1 << 20) // len(row))
    done = 0
    while done < height:
        n = min(step, height - done)
        out.append(z.compress(row * n))
        done += n
    out.append(z.flush())
    return b"".join(out)


def png(width, height, depth, color, idat, interlace=0, extra=b""):
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr(width, height, depth, color, interlace)
        + extra
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def png_zeros(width, height, depth, color, extra=b""):
    return png(width, height, depth, color, zeros_idat(width, height, depth, color), extra=extra)


def pixel(x, y, color):
    """An 8-bit test pattern: a light background with a dark centred block (a 'garment')."""
    inside = abs(x - 24) < 12 and abs(y - 32) < 18
    v = 40 if inside else 235
    return {
        0: bytes([v]),
        2: bytes([v, (x * 5) & 0xFF, (y * 3) & 0xFF]),
        3: bytes([1 if inside else 0]),
        4: bytes([v, 255]),
        6: bytes([v, (x * 5) & 0xFF, (y * 3) & 0xFF, 255]),
    }[color]


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_pattern(width, height, color, interlace=False, filters=(0,), extra=b""):
    """A small 8-bit image of the test pattern, plain or Adam7-interlaced, rows filtered with
    the given filter types in turn (only None=0 and Sub=1 are written)."""
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = bytearray()
    bpp = CHANNELS[color]
    n = 0
    for x0, y0, dx, dy in passes:
        for y in range(y0, height, dy):
            line = b"".join(pixel(x, y, color) for x in range(x0, width, dx))
            if not line:
                continue
            kind = filters[n % len(filters)]
            n += 1
            if kind == 1:
                line = bytes(
                    (line[i] - (line[i - bpp] if i >= bpp else 0)) & 0xFF for i in range(len(line))
                )
            raw += bytes([kind]) + line
    return png(width, height, 8, color, zlib.compress(bytes(raw), 9), 1 if interlace else 0, extra)


# --- JPEG ------------------------------------------------------------------------------------


def with_exif_orientation(jpeg, orientation):
    """The JPEG with an EXIF APP1 segment holding only an orientation tag, after its SOI."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    ifd += struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def with_jpeg_size(jpeg, width, height):
    """The JPEG with the size in its frame header (SOFn) replaced."""
    i = 2
    while i + 4 <= len(jpeg):
        marker = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]
        i += 2 + length
    raise ValueError("no SOF marker")


# --- multipart -------------------------------------------------------------------------------


def part(name, data, content_type="image/jpeg", filename=None):
    head = b'Content-Disposition: form-data; name="' + name.encode() + b'"'
    if filename is not None:
        head += b'; filename="' + filename.encode() + b'"'
    head += b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type.encode() + b"\r\n"
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n" + data + b"\r\n"


def body(*parts):
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def main():
    person, cloth, mask = read(PERSON), read(CLOTH), read(CLOTH_MASK)
    png_mask = png_pattern(48, 64, 0)
    png_person = png_pattern(48, 64, 2)
    png_cloth = png_pattern(48, 64, 6, filters=(0, 1))

    # Hostile images: headers that pass a naive pixel-count check, or lie.
    mask_36m_x1 = png_zeros(36_000_000, 1, 1, 0)
    mask_1m_x36 = png_zeros(1_000_000, 36, 1, 0)
    person_36m_x1 = png_zeros(36_000_000, 1, 1, 0)
    # A 16-bit RGBA header claiming 5900x5900 (34.8 Mpx, 278 MB decoded) over a few bytes.
    rgba16_5900 = png(5900, 5900, 16, 6, zlib.compress(b"\x00" * 4096, 9))
    # Within the limits but as big as they allow: 4,000,000 pixels, and a 16-bit RGBA image.
    gray_4m = png_zeros(4000, 1000, 1, 0)
    rgba16_1000 = png_zeros(1000, 1000, 16, 6)
    # At the aspect-ratio limit (16) and the pixel limit (4,000,000) of the fuzz targets at once.
    wide_8000x500 = png_zeros(8000, 500, 1, 0)
    tall_500x8000 = png_zeros(500, 8000, 8, 0)
    truncated_jpeg = person[: len(person) // 2]
    jpeg_lying_size = with_jpeg_size(cloth, 4000, 1000)

    images = {
        "person.jpg": person,
        "cloth.jpg": cloth,
        "cloth_mask.jpg": mask,
        "person_exif6.jpg": with_exif_orientation(person, 6),
        "cloth_exif3.jpg": with_exif_orientation(cloth, 3),
        "pattern_gray.png": png_mask,
        "pattern_rgb.png": png_person,
        "pattern_rgba_sub.png": png_cloth,
        "pattern_rgb_adam7.png": png_pattern(33, 41, 2, interlace=True),
        "pattern_graya.png": png_pattern(40, 40, 4),
        "pattern_palette_trns.png": png_pattern(
            48, 64, 3, extra=chunk(b"PLTE", b"\xeb\xeb\xeb\x28\x28\x28") + chunk(b"tRNS", b"\x00")
        ),
        "gray16.png": png_zeros(64, 64, 16, 0),
        "webp_1x1.webp": WEBP_1X1,
        "mask_36m_x1.png": mask_36m_x1,
        "mask_1m_x36.png": mask_1m_x36,
        "rgba16_5900_header.png": rgba16_5900,
        "gray1_4000x1000.png": gray_4m,
        "rgba16_1000x1000.png": rgba16_1000,
        "wide_8000x500.png": wide_8000x500,
        "tall_500x8000.png": tall_500x8000,
        "truncated.jpg": truncated_jpeg,
        "jpeg_lying_size.jpg": jpeg_lying_size,
        "gif_1x1.gif": GIF_1X1,
    }

    P, C, M = "person_image", "cloth_image", "cloth_mask"
    bodies = {
        # Ordinary requests.
        "ok_pair": body(part(P, person, filename="person.jpg"), part(C, cloth, filename="cloth.jpg")),
        "ok_pair_mask": body(part(P, person), part(C, cloth), part(M, mask)),
        "ok_png_mask_no_types": body(
            part(P, png_person, None), part(C, png_cloth, None), part(M, png_mask, None)
        ),
        "ok_octet_stream_exif": body(
            part(P, with_exif_orientation(person, 6), "application/octet-stream"),
            part(C, with_exif_orientation(cloth, 8), "application/octet-stream"),
        ),
        "ok_interlaced_palette": body(
            part(P, images["pattern_rgb_adam7.png"], "image/png"),
            part(C, images["pattern_graya.png"], "image/png"),
            part(M, images["pattern_palette_trns.png"], "image/png"),
        ),
        "ok_webp_mask": body(part(P, person), part(C, cloth), part(M, WEBP_1X1, "image/webp")),
        "ok_unknown_part_first": body(
            part("other", b"ignored text", "text/plain"), part(C, cloth), part(P, person)
        ),
        # Hostile requests.
        "mask_36m_x1": body(part(P, person), part(C, cloth), part(M, mask_36m_x1, "image/png")),
        "mask_1m_x36": body(part(P, person), part(C, cloth), part(M, mask_1m_x36, "image/png")),
        "person_36m_x1": body(part(P, person_36m_x1, "image/png"), part(C, cloth)),
        "rgba16_5900_header": body(part(P, person), part(C, rgba16_5900, "image/png")),
        "max_pixels_mask": body(part(P, person), part(C, cloth), part(M, gray_4m, "image/png")),
        "rgba16_1000_person": body(part(P, rgba16_1000, "image/png"), part(C, png_cloth, "image/png")),
        "aspect_limit": body(
            part(P, tall_500x8000, "image/png"), part(C, cloth), part(M, wide_8000x500, "image/png")
        ),
        "truncated_jpeg": body(part(P, truncated_jpeg), part(C, cloth)),
        "jpeg_lying_size": body(part(P, person), part(C, jpeg_lying_size)),
        "gif": body(part(P, GIF_1X1, "image/gif"), part(C, cloth)),
        "gif_as_jpeg": body(part(P, person), part(C, GIF_1X1)),
        "empty_part": body(part(P, b""), part(C, cloth)),
        "empty_mask": body(part(P, person), part(C, cloth), part(M, b"")),
        "duplicate_person": body(part(P, person), part(P, person), part(C, cloth)),
        "duplicate_mask": body(part(P, person), part(C, cloth), part(M, mask), part(M, mask)),
        "missing_cloth": body(part(P, person)),
        "text_part": body(part(P, b"hello", "text/plain"), part(C, cloth)),
        "no_closing_boundary": body(part(P, person), part(C, cloth))[: -len(b"--\r\n") - 2],
        "empty_body": b"",
    }

    def text(name, value):
        return part(name, value.encode() if isinstance(value, str) else value, None)

    pair = (part(P, person), part(C, cloth))
    jobs = {
        "ok_job": body(*pair),
        "ok_all_fields": body(
            *pair,
            part(M, mask),
            text("priority", "interactive"),
            text("metadata", "sku-42"),
            text("format", "png"),
            text("quality", "75"),
            text("webhook_url", "https://hooks.example.com/done?x=1"),
        ),
        "ok_http_address_hook": body(*pair, text("webhook_url", "http://127.0.0.1:9000/hook")),
        "hook_other_port": body(*pair, text("webhook_url", "http://127.0.0.1:9001/hook")),
        "hook_not_listed": body(*pair, text("webhook_url", "https://evil.example.net/")),
        "hook_userinfo": body(*pair, text("webhook_url", "https://a:b@hooks.example.com/")),
        "hook_http_name": body(*pair, text("webhook_url", "http://hooks.example.com/")),
        "hook_ipv6": body(*pair, text("webhook_url", "https://[::ffff:127.0.0.1]:9000/")),
        "hook_long": body(*pair, text("webhook_url", "https://hooks.example.com/" + "a" * 2100)),
        "priority_bad": body(*pair, text("priority", "urgent")),
        "priority_empty": body(*pair, text("priority", "")),
        "quality_zero": body(*pair, text("quality", "0")),
        "quality_big": body(*pair, text("quality", "256")),
        "quality_spaces": body(*pair, text("quality", " 90 ")),
        "format_bad": body(*pair, text("format", "gif")),
        "metadata_512": body(*pair, text("metadata", "m" * 512)),
        "metadata_513": body(*pair, text("metadata", "m" * 513)),
        "metadata_utf8": body(*pair, text("metadata", "\u00e9" * 256)),
        "metadata_not_utf8": body(*pair, text("metadata", b"\xff\xfe")),
        "duplicate_priority": body(*pair, text("priority", "batch"), text("priority", "interactive")),
        "unknown_field": body(*pair, text("colour", "red")),
        "field_as_file": body(*pair, part("metadata", b"x", "text/plain", filename="m.txt")),
        "empty_part": body(part(P, b""), part(C, cloth)),
        "missing_cloth": body(part(P, person), text("priority", "batch")),
    }

    for sub, files in (("upload", bodies), ("image", images), ("jobs", jobs)):
        out = os.path.join(FUZZ, "corpus", sub)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for name, data in files.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        total = sum(len(d) for d in files.values())
        print(f"{out}: {len(files)} files, {total} bytes")


if __name__ == "__main__":
    main()
