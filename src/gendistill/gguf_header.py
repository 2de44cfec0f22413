"""The header of a GGUF file (its key/value metadata and tensor names), read without de-quantising anything and without
parsing the whole file: a teacher's architecture and tokenizer are checked from it in milliseconds
(:mod:`gendistill.teachers`)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

from gendistill.errors import GendistillError, first_line

_GGUF_MAGIC = b"GGUF"
# value type id -> struct format for the fixed-size GGUF value types (gguf.GGUFValueType)
_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    version: int
    fields: dict[str, Any]  # scalar and string values; arrays as ("array", item_type, length)
    tensor_names: tuple[str, ...] = field(default=())

    @property
    def architecture(self) -> str | None:
        arch = self.fields.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Truncated(Exception):
    pass


def read_gguf_header(path: str) -> GGUFHeader:
    """Parse a GGUF file's key/value metadata and tensor names (not the tensor data).

    Arrays (the tokenizer's vocabulary and merges) are skipped over, which keeps this at a few milliseconds even for
    a 150k-token vocabulary. Raises :class:`GendistillError` for a file that is not a (little-endian, v2/v3) GGUF.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:

        def read(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise _Truncated
            return b

        def unpack(fmt: str) -> Any:
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def read_str() -> str:
            n = unpack("<Q")
            if n > size:
                raise _Truncated
            return read(n).decode("utf-8", errors="replace")

        def skip_value(vtype: int) -> None:
            if vtype in _GGUF_SCALAR:
                f.seek(struct.calcsize(_GGUF_SCALAR[vtype]), os.SEEK_CUR)
            elif vtype == _GGUF_STRING:
                n = unpack("<Q")
                if n > size:
                    raise _Truncated
                f.seek(n, os.SEEK_CUR)
            elif vtype == _GGUF_ARRAY:
                itype, count = unpack("<I"), unpack("<Q")
                if itype in _GGUF_SCALAR:
                    f.seek(struct.calcsize(_GGUF_SCALAR[itype]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip_value(itype)
            else:
                raise ValueError(f"unknown GGUF value type {vtype}")

        try:
            magic = read(4)
            if magic != _GGUF_MAGIC:
                raise GendistillError(f"teacher file {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
            version = unpack("<I")
            if version not in (2, 3):
                raise GendistillError(
                    f"teacher file {path} is GGUF version {version}; only little-endian GGUF v2/v3 can be loaded"
                )
            n_tensors, n_kv = unpack("<Q"), unpack("<Q")
            fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = read_str()
                vtype = unpack("<I")
                if vtype in _GGUF_SCALAR:
                    fields[key] = unpack(_GGUF_SCALAR[vtype])
                elif vtype == _GGUF_STRING:
                    fields[key] = read_str()
                elif vtype == _GGUF_ARRAY:
                    start = f.tell()
                    itype, count = unpack("<I"), unpack("<Q")
                    f.seek(start)
                    skip_value(_GGUF_ARRAY)
                    fields[key] = ("array", itype, count)
                else:
                    raise ValueError(f"unknown GGUF value type {vtype} for key {key}")
            names = []
            for _ in range(n_tensors):
                names.append(read_str())
                n_dims = unpack("<I")
                f.seek(8 * n_dims + 4 + 8, os.SEEK_CUR)  # dims (u64 each), ggml type (u32), offset (u64)
            if f.tell() > size:
                raise _Truncated
        except _Truncated:
            raise GendistillError(f"teacher file {path} is a truncated or corrupt GGUF file") from None
        except (ValueError, struct.error) as exc:
            raise GendistillError(f"teacher file {path} is a corrupt GGUF file: {first_line(exc)}") from None
    return GGUFHeader(path=path, version=version, fields=fields, tensor_names=tuple(names))
