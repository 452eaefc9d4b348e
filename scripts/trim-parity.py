#!/usr/bin/env python3
"""Writes the first K pairs of a DM-VTON parity file's input.* and output.* tensors to a new
safetensors file (small enough to travel with the GPU check bundle). Standard library only.
The source may be gzipped, as the repository's is.

    python3 scripts/trim-parity.py tests/fixtures/dmvton/parity.safetensors.gz OUT.safetensors [K]
"""
import gzip
import json
import struct
import sys


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    keep_pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with (gzip.open if src.endswith(".gz") else open)(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out_header, blobs, offset = {}, [], 0
        for name, info in header.items():
            if name == "__metadata__" or not name.startswith(("input.", "output.")):
                continue
            shape = info["shape"]
            start, end = info["data_offsets"]
            k = min(keep_pairs, shape[0])
            size = (end - start) * k // shape[0]
            f.seek(base + start)
            blobs.append(f.read(size))
            out_header[name] = {"dtype": info["dtype"], "shape": [k] + shape[1:],
                                "data_offsets": [offset, offset + size]}
            offset += size
    text = json.dumps(out_header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(dst, "wb") as g:
        g.write(struct.pack("<Q", len(text)))
        g.write(text)
        for blob in blobs:
            g.write(blob)


if __name__ == "__main__":
    main()
