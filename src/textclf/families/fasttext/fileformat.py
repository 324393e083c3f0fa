"""A check of a fastText ``.bin``/``.ftz`` file against its own header, before the library reads it.

fastText trusts the file: random bytes give "wrong file format", but a file cut short after the
header makes it allocate the matrices the header promises and die later (``Vector::mul: size
mismatch``, or minutes of allocation and ``std::bad_alloc``). This walks the header and the
dictionary (fastText's ``Args::save``, ``Dictionary::save``, ``DenseMatrix::save``) and, for an
unquantized model, compares the file size with the size they imply. Quantized matrices are only
checked to start inside the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from textclf.core.errors import ModelError

MAGIC = 793712314
VERSIONS = (11, 12)
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t
_DICT = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_MATRIX = struct.Struct("<qq")  # m n (float32 values follow)


class _Reader:
    def __init__(self, fh, path: Path, size: int):
        self.fh, self.path, self.size = fh, path, size
        self.buf, self.pos, self.offset = b"", 0, 0

    def _fill(self, need: int) -> None:
        while len(self.buf) - self.pos < need:
            block = self.fh.read(1 << 20)
            if not block:
                raise ModelError(f"{self.path}: truncated fastText model: the file ends inside its header or dictionary "
                                 f"({self.size} bytes)")
            self.buf = self.buf[self.pos:] + block
            self.pos = 0

    def take(self, n: int) -> bytes:
        self._fill(n)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        self.offset += n
        return out

    def skip_cstring(self) -> None:
        while True:
            end = self.buf.find(b"\0", self.pos)
            if end >= 0:
                self.offset += end + 1 - self.pos
                self.pos = end + 1
                return
            self._fill(len(self.buf) - self.pos + 1)


def check_model_file(path: str | Path) -> None:
    """Raise ModelError naming ``path`` when it is not a complete fastText model file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the fastText model: {exc.strerror}") from None
    if size == 0:
        raise ModelError(f"{path}: the fastText model file is empty (0 bytes)")
    with path.open("rb") as fh:
        r = _Reader(fh, path, size)
        if size < 8:
            raise ModelError(f"{path}: not a fastText model file ({size} bytes)")
        magic, version = struct.unpack("<ii", r.take(8))
        if magic != MAGIC or version not in VERSIONS:
            raise ModelError(f"{path}: not a fastText model file (wrong magic number or version)")
        args = _ARGS.unpack(r.take(_ARGS.size))
        dim, bucket = args[0], args[8]
        n_entries, nwords, _nlabels, _ntokens, prune = _DICT.unpack(r.take(_DICT.size))
        if not (0 <= n_entries < 1 << 31 and 0 <= nwords <= n_entries and -1 <= prune < 1 << 40 and dim > 0):
            raise ModelError(f"{path}: damaged fastText model: implausible header (dim {dim}, {n_entries} words)")
        for _ in range(n_entries):
            r.skip_cstring()
            r.take(9)  # int64 count, int8 type
        if prune > 0:
            r.take(8 * prune)
        quant_input = r.take(1) != b"\0"
        if quant_input:
            return  # a product-quantized matrix follows (.ftz): its layout is not walked here
        m, n = _MATRIX.unpack(r.take(_MATRIX.size))
        if m < 0 or n != dim or (prune <= 0 and m != nwords + bucket):
            raise ModelError(f"{path}: damaged fastText model: input matrix {m}x{n} does not fit the header")
        after_input = r.offset + 4 * m * n
        if after_input + 1 + _MATRIX.size > size:
            raise ModelError(f"{path}: truncated fastText model: {size} bytes, the header promises more than "
                             f"{after_input} (the input matrix alone is {m}x{n})")
        fh.seek(after_input)
        qout = fh.read(1) != b"\0"
        if qout:
            return
        m2, n2 = _MATRIX.unpack(fh.read(_MATRIX.size))
        expected = after_input + 1 + _MATRIX.size + 4 * m2 * n2
        if m2 < 0 or n2 != dim or expected != size:
            raise ModelError(f"{path}: truncated or damaged fastText model: {size} bytes, its header says {expected}")
