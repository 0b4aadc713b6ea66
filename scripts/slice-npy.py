#!/usr/bin/env python3
"""Copies the first N samples (axis 0) of a little-endian C-order .npy file: how the
calibration subsets in tests/models/*/calib were cut from the full sets (no numpy needed).
Usage: slice-npy.py IN.npy OUT.npy N"""
import ast
import struct
import sys

src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
assert data[:6] == b"\x93NUMPY", "not a .npy file"
major = data[6]
hlen_size = 2 if major == 1 else 4
hlen = struct.unpack("<H" if major == 1 else "<I", data[8:8 + hlen_size])[0]
start = 8 + hlen_size + hlen
header = ast.literal_eval(data[8 + hlen_size:start].decode("latin1"))
assert not header["fortran_order"]
shape = header["shape"]
item = int(header["descr"][2:])
per = item
for d in shape[1:]:
    per *= d
n = min(n, shape[0])
header["shape"] = (n,) + tuple(shape[1:])
text = repr(header).encode("latin1")
pad = (64 - (8 + hlen_size + len(text) + 1) % 64) % 64
text = text + b" " * pad + b"\n"
out = data[:6] + bytes([1, 0]) + struct.pack("<H", len(text)) + text + data[start:start + n * per]
open(dst, "wb").write(out)
