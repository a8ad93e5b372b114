"""Is there a Ray head at host:port? Asked with one gRPC call, within a time limit, before ray.init.

ray.init retries an address that answers TCP but is not a Ray GCS (a web server, a database, a wrong port) for
minutes, so `--ray` pointed at one would hang. Here the GCS's own liveness call (ray.rpc.NodeInfoGcsService/
CheckAlive, what Ray's tools ask) is made by hand over HTTP/2 — Ray bundles gRPC in C++ and brings no Python gRPC —
and a reply means a Ray head, which also says its Ray version. Only the few frames this one call needs are spoken:
the request's headers are HPACK literals (no compression), and of the reply only its first DATA frame is read.
"""
from __future__ import annotations

import socket
import struct
import time

CHECK_ALIVE = "/ray.rpc.NodeInfoGcsService/CheckAlive"
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_LAST_FRAME_TYPE = 0x9  # CONTINUATION
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
_MAX_FRAME = 1 << 24
_STREAM = 1
_EMPTY_MESSAGE = b"\x00" + struct.pack(">I", 0)  # not compressed, 0 bytes: a CheckAliveRequest with no field set
_REPLY_RAY_VERSION = 2  # CheckAliveReply.ray_version


class NotARayHead(Exception):
    """Something answers at the address, but not as a Ray head; the message says what was seen."""


def ray_head_version(host: str, port: int, timeout: float) -> str:
    """The Ray version of the head whose GCS listens at host:port. OSError when nothing can be reached;
    NotARayHead when what answers is not a Ray GCS or gives no reply within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0) + _frame(_HEADERS, _END_HEADERS, _STREAM, _request_headers(
            host, port)) + _frame(_DATA, _END_STREAM, _STREAM, _EMPTY_MESSAGE))
        frames = _Frames(sock, deadline)
        while True:
            kind, flags, stream, payload = frames.next()
            if kind == _SETTINGS and not flags & _ACK:
                sock.sendall(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                sock.sendall(_frame(_PING, _ACK, 0, payload))
            elif kind == _DATA and stream == _STREAM and len(payload) >= 5:
                return _string_field(payload[5:], _REPLY_RAY_VERSION) or "unknown"
            elif kind == _GOAWAY or stream == _STREAM and (kind == _RST_STREAM or flags & _END_STREAM):
                raise NotARayHead("a gRPC server without Ray's GCS service answers there")


class _Frames:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.buffer = sock, deadline, b""

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise NotARayHead("it did not reply as a Ray head in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise NotARayHead("it did not reply as a Ray head in time") from None
            if not chunk:
                raise NotARayHead("it closed the connection without a Ray reply")
            self.buffer += chunk
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def next(self) -> tuple[int, int, int, bytes]:
        head = self._read(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        if kind > _LAST_FRAME_TYPE or length > _MAX_FRAME:
            seen = head.split(b"\r\n")[0].decode("ascii", "replace")
            raise NotARayHead(f"it does not speak gRPC (it sent {seen!r}...)")
        return kind, flags, int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, self._read(length)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _request_headers(host: str, port: int) -> bytes:
    fields = ((":method", "POST"), (":scheme", "http"), (":path", CHECK_ALIVE), (":authority", f"{host}:{port}"),
              ("content-type", "application/grpc"), ("te", "trailers"))
    return b"".join(b"\x00" + _hpack_int(len(n)) + n.encode() + _hpack_int(len(v)) + v.encode() for n, v in fields)


def _hpack_int(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (a string length, Huffman flag off)."""
    if value < 127:
        return bytes([value])
    out, value = [127], value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _string_field(message: bytes, number: int) -> str | None:
    """Field `number` of a protobuf message, read as a string; None when absent or the message is malformed."""
    at = 0
    try:
        while at < len(message):
            key, at = _varint(message, at)
            wire = key & 7
            if wire == 0:
                _, at = _varint(message, at)
            elif wire == 2:
                length, at = _varint(message, at)
                if key >> 3 == number:
                    return message[at:at + length].decode(errors="replace")
                at += length
            elif wire in (1, 5):
                at += 8 if wire == 1 else 4
            else:
                return None
    except IndexError:
        return None
    return None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
