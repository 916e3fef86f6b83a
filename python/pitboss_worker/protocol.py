"""Wire format of the pitboss host <-> worker protocol, version 2.

docs/protocol.md is the specification; docs/protocol_vectors.json holds golden
frames that this module and the Rust host are both tested against.

Every frame::

    u32 length      big-endian, bytes after this field (9 + len(body))
    u8  kind
    u64 request_id  big-endian, 0 when the frame is not tied to a request
    body

Standard library only: this module is on the worker's hot path.
"""

import socket
import time
import json
import struct
from collections import namedtuple

PROTOCOL_VERSION = 2

#: Largest value of the length field (bytes after the length field itself).
MAX_FRAME_LENGTH = 64 * 1024 * 1024
#: kind (1) + request id (8): the smallest legal length field.
MIN_FRAME_LENGTH = 9
HEADER = struct.Struct(">IBQ")
HEADER_SIZE = HEADER.size  # 13 bytes: length + kind + request id
LENGTH_SIZE = 4
MAX_REQUEST_ID = 2 ** 64 - 1
MAX_TOOL_NAME_BYTES = 0xFFFF

# Frame kinds.
HELLO = 0x01
CALL = 0x02
RESULT = 0x03
ERROR = 0x04
STREAM_CHUNK = 0x05  # reserved for streaming results, not sent yet
STREAM_END = 0x06  # reserved for streaming results, not sent yet
CANCEL = 0x07
PING = 0x08
PONG = 0x09
SHUTDOWN = 0x0A

KIND_NAMES = {
    HELLO: "hello",
    CALL: "call",
    RESULT: "result",
    ERROR: "error",
    STREAM_CHUNK: "stream_chunk",
    STREAM_END: "stream_end",
    CANCEL: "cancel",
    PING: "ping",
    PONG: "pong",
    SHUTDOWN: "shutdown",
}
KINDS_BY_NAME = {name: kind for kind, name in KIND_NAMES.items()}

# Content types of CALL and RESULT payloads.
CONTENT_JSON = 0
CONTENT_RAW = 1
CONTENT_TYPES = (CONTENT_JSON, CONTENT_RAW)

# The "kind" field of an ERROR body.
ERROR_KINDS = (
    "unknown_tool",
    "bad_arguments",
    "bad_payload",
    "bad_result",
    "exception",
    "shutting_down",
    "protocol",
)

Frame = namedtuple("Frame", "kind request_id body")
Frame.__doc__ = "One decoded frame: kind (int), request_id (int), body (bytes)."


class ProtocolError(Exception):
    """Bytes that do not follow the protocol."""


class FrameTooLarge(ProtocolError):
    """A length field above MAX_FRAME_LENGTH."""

    def __init__(self, length, limit=MAX_FRAME_LENGTH):
        super().__init__(
            "frame length %d exceeds the limit of %d bytes" % (length, limit)
        )
        self.length = length
        self.limit = limit


def kind_name(kind):
    """'call' for 0x02; 'unknown(0x42)' for kinds this version does not define."""
    return KIND_NAMES.get(kind, "unknown(0x%02x)" % kind)


def encode_frame(kind, request_id, body=b""):
    """The whole frame (length field included) as bytes."""
    length = MIN_FRAME_LENGTH + len(body)
    if length > MAX_FRAME_LENGTH:
        raise FrameTooLarge(length)
    if not 0 <= kind <= 0xFF:
        raise ValueError("frame kind %r is not a u8" % (kind,))
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError("request id %r is not a u64" % (request_id,))
    return HEADER.pack(length, kind, request_id) + bytes(body)


def decode_frame(data):
    """Decode exactly one whole frame from bytes; ProtocolError otherwise."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise ProtocolError("a frame is at least %d bytes, got %d" % (HEADER_SIZE, len(data)))
    length, kind, request_id = HEADER.unpack_from(data)
    if length > MAX_FRAME_LENGTH:
        raise FrameTooLarge(length)
    if length != len(data) - LENGTH_SIZE:
        raise ProtocolError(
            "length field says %d bytes follow, %d do" % (length, len(data) - LENGTH_SIZE)
        )
    return Frame(kind, request_id, data[HEADER_SIZE:])


# --- bodies -----------------------------------------------------------------


# One encoder for every call: json.dumps with options builds a new encoder
# each time, a few microseconds on every RESULT. An encoder keeps no state
# between calls, so threads share it safely.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json_text(obj):
    """JSON text as the protocol writes it: compact separators, UTF-8, no ASCII escaping."""
    return _JSON_ENCODER.encode(obj)


def encode_call_body(tool, content_type, payload=b""):
    name = tool.encode("utf-8")
    if not name:
        raise ValueError("tool name is empty")
    if len(name) > MAX_TOOL_NAME_BYTES:
        raise ValueError("tool name is %d bytes, the limit is %d" % (len(name), MAX_TOOL_NAME_BYTES))
    if not 0 <= content_type <= 0xFF:
        raise ValueError("content type %r is not a u8" % (content_type,))
    return len(name).to_bytes(2, "big") + name + bytes((content_type,)) + bytes(payload)


def decode_call_body(body):
    """(tool, content_type, payload) from a CALL body; ProtocolError when malformed.

    The content type is returned as is, even when this version does not know
    it: an unknown content type is a per-call error (bad_payload), not a
    protocol violation.
    """
    if len(body) < 2:
        raise ProtocolError("CALL body is %d bytes, shorter than its tool name length field" % len(body))
    name_length = int.from_bytes(body[0:2], "big")
    end = 2 + name_length
    if len(body) < end + 1:
        raise ProtocolError(
            "CALL body is %d bytes, too short for a %d-byte tool name and a content type"
            % (len(body), name_length)
        )
    try:
        tool = bytes(body[2:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("CALL tool name is not valid UTF-8") from None
    return tool, body[end], bytes(body[end + 1:])


def encode_result_body(content_type, payload):
    return bytes((content_type,)) + bytes(payload)


def decode_result_body(body):
    """(content_type, payload) from a RESULT body."""
    if len(body) < 1:
        raise ProtocolError("RESULT body is empty (it starts with a content type byte)")
    return body[0], bytes(body[1:])


def encode_error_body(kind, type_name, message, traceback_text):
    return encode_json_text(
        {"kind": kind, "type": type_name, "message": message, "traceback": traceback_text}
    ).encode("utf-8")


def decode_json_body(body):
    """The JSON object of a HELLO or ERROR body."""
    try:
        obj = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("body is not UTF-8 JSON: %s" % exc) from None
    if not isinstance(obj, dict):
        raise ProtocolError("body is JSON but not an object")
    return obj


# --- reading a stream -------------------------------------------------------


class FrameReader:
    """Reads whole frames from a socket (anything with recv()).

    read_frame() returns a Frame, None at a clean end of stream (EOF between
    frames), and raises FrameTooLarge as soon as a length field over the limit
    arrives (before reading the body), ProtocolError for a length below 9 or
    an EOF inside a frame. OSError from the socket propagates.
    """

    def __init__(self, sock, max_length=MAX_FRAME_LENGTH, chunk_size=64 * 1024, spin=0.0):
        self._sock = sock
        self._max_length = max_length
        self._chunk_size = chunk_size
        self._buf = bytearray()
        self._spin = spin

    def _poll(self):
        """Up to `spin` seconds of non-blocking reads: the next frame of a
        busy caller usually arrives within that, and catching it awake saves
        the process a sleep and a wake-up (tens of microseconds each)."""
        deadline = time.perf_counter() + self._spin
        recv, size = self._sock.recv, self._chunk_size
        while time.perf_counter() < deadline:
            try:
                return recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
        return None

    def _fill(self, needed):
        """Read until the buffer holds `needed` bytes; False at EOF."""
        buf = self._buf
        while len(buf) < needed:
            chunk = self._poll() if self._spin else None
            if chunk is None:
                chunk = self._sock.recv(self._chunk_size)
            if not chunk:
                return False
            buf += chunk
        return True

    def read_frame(self):
        if not self._fill(LENGTH_SIZE):
            if self._buf:
                raise ProtocolError("end of stream inside a frame header")
            return None
        buf = self._buf
        length = int.from_bytes(buf[0:LENGTH_SIZE], "big")
        if length > self._max_length:
            raise FrameTooLarge(length, self._max_length)
        if length < MIN_FRAME_LENGTH:
            raise ProtocolError("frame length %d is below the minimum of %d" % (length, MIN_FRAME_LENGTH))
        total = LENGTH_SIZE + length
        if len(buf) >= total:
            data = memoryview(bytes(buf[:total]))
            del buf[:total]
        else:
            # A frame bigger than what is buffered: read the rest straight into
            # its own buffer, exactly up to its end (the next frame stays in
            # the socket).
            whole = bytearray(total)
            have = len(buf)
            whole[:have] = buf
            buf.clear()
            data = memoryview(whole)
            while have < total:
                n = self._sock.recv_into(data[have:], total - have)
                if n == 0:
                    raise ProtocolError("end of stream inside a %d-byte frame" % total)
                have += n
        kind = data[4]
        request_id = int.from_bytes(data[5:HEADER_SIZE], "big")
        return Frame(kind, request_id, bytes(data[HEADER_SIZE:]))
