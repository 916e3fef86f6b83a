"""Wire format of the pitboss host <-> worker protocol, version 3.

docs/protocol.md is the specification; docs/protocol_vectors.json holds golden
frames that this module and the Rust host are both tested against.

Every frame::

    u32 length      big-endian, bytes after this field (9 + len(body))
    u8  kind
    u64 request_id  big-endian, 0 when the frame is not tied to a request
    body

Standard library only: this module is on the worker's hot path.
"""

import os
import select
import time
import json
import struct
from collections import namedtuple

PROTOCOL_VERSION = 3

#: Largest value of the length field (bytes after the length field itself).
MAX_FRAME_LENGTH = 64 * 1024 * 1024
#: kind (1) + request id (8): the smallest legal length field.
MIN_FRAME_LENGTH = 9
HEADER = struct.Struct(">IBQ")
HEADER_SIZE = HEADER.size  # 13 bytes: length + kind + request id
LENGTH_SIZE = 4
MAX_REQUEST_ID = 2 ** 64 - 1
MAX_TOOL_NAME_BYTES = 0xFFFF
MAX_TRACE_ID_BYTES = 0xFF
MAX_SESSION_BYTES = 0xFFFF
#: CALL flags (one byte after the content type).
FLAG_STREAM = 0x01
#: Chunks a streaming call may send before the host grants more (CREDIT).
STREAM_WINDOW = 16
#: CANCELs for calls not yet read that the worker remembers (the last ones).
EARLY_CANCEL_MEMORY = 1024

# Frame kinds.
HELLO = 0x01
CALL = 0x02
RESULT = 0x03
ERROR = 0x04
STREAM_CHUNK = 0x05
STREAM_END = 0x06
CANCEL = 0x07
PING = 0x08
PONG = 0x09
SHUTDOWN = 0x0A
CREDIT = 0x0B

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
    CREDIT: "credit",
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
    "cancelled",
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


def _checked_utf8(text, what, limit):
    data = text.encode("utf-8")
    if len(data) > limit:
        raise ValueError("%s is %d bytes of UTF-8, the limit is %d" % (what, len(data), limit))
    return data


def encode_call_body(tool, content_type, payload=b"", stream=False, trace_id="", session=None):
    """A CALL body: tool name, content type, flags (STREAM), trace id, session
    key (None or "" for none), payload."""
    name = _checked_utf8(tool, "tool name", MAX_TOOL_NAME_BYTES)
    if not name:
        raise ValueError("tool name is empty")
    if not 0 <= content_type <= 0xFF:
        raise ValueError("content type %r is not a u8" % (content_type,))
    trace = _checked_utf8(trace_id, "trace id", MAX_TRACE_ID_BYTES)
    key = _checked_utf8(session or "", "session key", MAX_SESSION_BYTES)
    return b"".join((
        len(name).to_bytes(2, "big"), name,
        bytes((content_type, FLAG_STREAM if stream else 0, len(trace))), trace,
        len(key).to_bytes(2, "big"), key,
        bytes(payload),
    ))


def decode_call_body(body):
    """(tool, content_type, stream, trace_id, session, payload) from a CALL
    body; ProtocolError when malformed.

    `stream` is a bool (flag bit 0; the other bits are ignored), `trace_id` a
    str ("" when empty), `session` a str or None (an empty key means none).
    The content type is returned as is, even when this version does not know
    it: an unknown content type is a per-call error (bad_payload), not a
    protocol violation.
    """
    # On the hot path: plain indexing and slicing, one bounds check per field.
    if type(body) is not bytes:
        body = bytes(body)
    size = len(body)
    if size < 2:
        raise ProtocolError("CALL body is %d bytes, shorter than its tool name length field" % size)
    end = 2 + ((body[0] << 8) | body[1])
    # content type, flags, trace id length
    if size < end + 3:
        raise ProtocolError(
            "CALL body is %d bytes, too short for a %d-byte tool name, a content type, flags and a trace id length"
            % (size, end - 2)
        )
    trace_start = end + 3
    trace_end = trace_start + body[end + 2]
    if size < trace_end + 2:
        raise ProtocolError(
            "CALL body is %d bytes, too short for a %d-byte trace id and a session length"
            % (size, trace_end - trace_start)
        )
    session_end = trace_end + 2 + ((body[trace_end] << 8) | body[trace_end + 1])
    if size < session_end:
        raise ProtocolError(
            "CALL body is %d bytes, too short for a %d-byte session key" % (size, session_end - trace_end - 2)
        )
    try:
        tool = body[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("CALL tool name is not valid UTF-8") from None
    try:
        trace_id = body[trace_start:trace_end].decode("utf-8") if trace_end > trace_start else ""
    except UnicodeDecodeError:
        raise ProtocolError("CALL trace id is not valid UTF-8") from None
    try:
        session = body[trace_end + 2:session_end].decode("utf-8") if session_end > trace_end + 2 else None
    except UnicodeDecodeError:
        raise ProtocolError("CALL session key is not valid UTF-8") from None
    return tool, body[end], (body[end + 1] & FLAG_STREAM) != 0, trace_id, session, body[session_end:]


def encode_result_body(content_type, payload):
    return bytes((content_type,)) + bytes(payload)


def decode_result_body(body):
    """(content_type, payload) from a RESULT or STREAM_CHUNK body."""
    if len(body) < 1:
        raise ProtocolError("RESULT body is empty (it starts with a content type byte)")
    return body[0], bytes(body[1:])


# A STREAM_CHUNK body is laid out like a RESULT body.
encode_stream_chunk_body = encode_result_body
decode_stream_chunk_body = decode_result_body


def encode_credit_body(chunks):
    """A CREDIT body: the u32 count of further chunks the worker may send."""
    if not 0 <= chunks <= 0xFFFFFFFF:
        raise ValueError("credit %r is not a u32" % (chunks,))
    return chunks.to_bytes(4, "big")


def decode_credit_body(body):
    """The chunk count of a CREDIT body; ProtocolError unless it is 4 bytes."""
    if len(body) != 4:
        raise ProtocolError("CREDIT body is %d bytes, not a 4-byte count" % len(body))
    return int.from_bytes(body, "big")


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
    """Reads whole frames from a socket (anything with recv(), and fileno()
    when `spin` is set: it polls the descriptor).

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
        self._poller = None

    def _poll(self):
        """Up to `spin` seconds of polling for the next frame: a busy
        caller's usually arrives within that, and catching it awake saves
        the process a sleep and a wake-up (tens of microseconds each).

        Between polls the worker yields its core: the host that sends the
        next call may be waiting for that very core (on a 2-core machine,
        two spinning workers held the host to half the calls a second).
        A zero-timeout poll, not a non-blocking recv: each empty recv raised
        BlockingIOError, and building that exception (its strerror text
        decoded through the locale) cost more than the poll itself."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._sock, select.POLLIN)
        deadline = time.perf_counter() + self._spin
        ready, pause = self._poller.poll, os.sched_yield
        while time.perf_counter() < deadline:
            if ready(0):
                return self._sock.recv(self._chunk_size)
            pause()
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
