"""Minimal TensorBoard scalar logging without the tensorboard package.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecord framing (length, masked CRC-32C of
the length, a serialized ``Event`` protobuf, masked CRC-32C of the data). We only write scalar
summaries, so the few protobuf fields needed are encoded by hand:

``Event``: wall_time (1, double), step (2, int64), file_version (3, string), summary (5);
``Summary``: value (1, repeated); ``Summary.Value``: tag (1, string), simple_value (2, float).

:func:`read_scalars` parses such a file back (and checks every CRC); the tests use it.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(step: int, *, summary: bytes | None = None, version: str | None = None) -> bytes:
    body = _field(1, 1, struct.pack("<d", time.time())) + _field(2, 0, _varint(step))
    if version is not None:
        body += _bytes_field(3, version.encode())
    if summary is not None:
        body += _bytes_field(5, summary)
    return body


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Append scalar summaries to one event file in ``folder`` (one file per writer)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.synthex"
        self._fh = self.path.open("ab")
        self._fh.write(_record(_event(0, version="brain.Event:2")))
        self._fh.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
            for tag, v in values.items())
        self._fh.write(_record(_event(step, summary=summary)))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------------------------ reading
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_scalars(path: str | Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in an event file; raises ValueError on a bad CRC."""
    data = Path(path).read_bytes()
    pos, out = 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12:pos + 12 + length]
        if struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] != masked_crc(body):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        pos += 16 + length
        step = 0
        for number, value in _fields(body):
            if number == 2:
                step = value
            elif number == 5:
                for _, item in _fields(value):
                    tag, scalar = "", float("nan")
                    for n, v in _fields(item):
                        if n == 1:
                            tag = v.decode()
                        elif n == 2:
                            (scalar,) = struct.unpack("<f", v)
                    out.append((step, tag, scalar))
    return out
