"""The wire format against the golden vectors in docs/protocol_vectors.json,
and the frame reader's handling of a byte stream."""

import json
import socket
import threading
import time

import pytest

from pitboss_worker import protocol as P
from pitboss_worker.dispatch import Dispatcher, cancelled_error, error
from pitboss_worker.worker import worker_facts
from worker_harness import VECTORS_PATH

with open(VECTORS_PATH, encoding="utf-8") as _f:
    VECTORS_DOC = json.load(_f)
VECTORS = VECTORS_DOC["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}


def test_vectors_file_shape():
    assert VECTORS_DOC["protocol"] == P.PROTOCOL_VERSION == 3
    assert "version 3" in VECTORS_DOC["description"]
    assert len(BY_NAME) == len(VECTORS), "vector names are unique"
    for v in VECTORS:
        assert v["hex"] == v["hex"].lower()
        assert v["kind"] in P.KINDS_BY_NAME
        assert 0 <= v["request_id"] <= P.MAX_REQUEST_ID
    # what the spec promises the file covers
    kinds = {v["kind"] for v in VECTORS}
    assert kinds == set(P.KINDS_BY_NAME), "every frame kind has a vector"
    calls = [v for v in VECTORS if v["kind"] == "call"]
    for v in calls:
        assert isinstance(v["stream"], bool) and isinstance(v["trace_id"], str) and isinstance(v["session"], str)
    assert any(v["payload_hex"] == "" for v in calls)
    assert any(v["content_type"] == P.CONTENT_RAW for v in calls)
    assert any(bytes.fromhex(v["payload_hex"]) == b'{"a":1}' for v in calls)
    assert any(v["stream"] for v in calls) and any(not v["stream"] for v in calls)
    assert any(v["session"] for v in calls) and any(not v["session"] for v in calls)
    assert any(v["trace_id"] for v in calls) and any(not v["trace_id"] for v in calls)
    assert {v["content_type"] for v in VECTORS if v["kind"] == "result"} == {0, 1}
    assert {v["content_type"] for v in VECTORS if v["kind"] == "stream_chunk"} == {0, 1}
    assert {v["body"]["kind"] for v in VECTORS if v["kind"] == "error"} >= {"exception", "cancelled"}
    assert all(isinstance(v["credit"], int) for v in VECTORS if v["kind"] == "credit")
    assert any(v["request_id"] > 2 ** 32 for v in VECTORS)
    assert any(v["request_id"] == 2 ** 64 - 1 for v in VECTORS)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_header_by_hand(v):
    """The frame layout, checked without the module under test."""
    data = bytes.fromhex(v["hex"])
    assert int.from_bytes(data[0:4], "big") == len(data) - 4
    assert data[4] == P.KINDS_BY_NAME[v["kind"]]
    assert int.from_bytes(data[5:13], "big") == v["request_id"]


def _encode_body(v):
    kind = v["kind"]
    if kind == "call":
        return P.encode_call_body(
            v["tool"], v["content_type"], bytes.fromhex(v["payload_hex"]),
            stream=v["stream"], trace_id=v["trace_id"], session=v["session"],
        )
    if kind == "result":
        return P.encode_result_body(v["content_type"], bytes.fromhex(v["payload_hex"]))
    if kind == "stream_chunk":
        return P.encode_stream_chunk_body(v["content_type"], bytes.fromhex(v["payload_hex"]))
    if kind == "credit":
        return P.encode_credit_body(v["credit"])
    if kind == "hello":
        return P.encode_json_text(v["body"]).encode("utf-8")
    if kind == "error":
        b = v["body"]
        return P.encode_error_body(b["kind"], b["type"], b["message"], b["traceback"])
    return b""


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encode(v):
    frame = P.encode_frame(P.KINDS_BY_NAME[v["kind"]], v["request_id"], _encode_body(v))
    assert frame.hex() == v["hex"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decode(v):
    frame = P.decode_frame(bytes.fromhex(v["hex"]))
    assert frame.kind == P.KINDS_BY_NAME[v["kind"]]
    assert frame.request_id == v["request_id"]
    kind = v["kind"]
    if kind == "call":
        tool, ct, stream, trace_id, session, payload = P.decode_call_body(frame.body)
        assert (tool, ct, stream, trace_id, session, payload.hex()) == (
            v["tool"], v["content_type"], v["stream"], v["trace_id"], v["session"] or None, v["payload_hex"])
    elif kind == "result":
        ct, payload = P.decode_result_body(frame.body)
        assert (ct, payload.hex()) == (v["content_type"], v["payload_hex"])
    elif kind == "stream_chunk":
        ct, payload = P.decode_stream_chunk_body(frame.body)
        assert (ct, payload.hex()) == (v["content_type"], v["payload_hex"])
    elif kind == "credit":
        assert P.decode_credit_body(frame.body) == v["credit"]
    elif kind in ("hello", "error"):
        assert frame.body == v["body_text"].encode("utf-8")
        assert P.decode_json_body(frame.body) == v["body"]
    else:
        assert frame.body == b""


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_through_reader(v):
    a, b = socket.socketpair()
    try:
        data = bytes.fromhex(v["hex"])
        a.sendall(data + data)
        a.close()
        reader = P.FrameReader(b, chunk_size=5)  # tiny reads: frames arrive in pieces
        first, second = reader.read_frame(), reader.read_frame()
        assert first == second == P.decode_frame(data)
        assert reader.read_frame() is None
    finally:
        b.close()


@pytest.mark.parametrize("ends", ["frame then EOF", "EOF mid-frame"])
def test_a_polling_reader_sees_frames_and_eof_that_arrive_while_it_spins(ends):
    """With `spin` set, the reader polls for up to that long before a
    blocking recv: a frame sent during the spin, and an end of stream,
    must read exactly as they do without it."""
    a, b = socket.socketpair()
    data = P.encode_frame(P.PONG, 7)
    try:
        reader = P.FrameReader(b, spin=0.5)

        def send_later():
            time.sleep(0.05)  # inside the reader's 0.5 s spin
            a.sendall(data if ends == "frame then EOF" else data[:6])
            time.sleep(0.05)
            a.close()

        sender = threading.Thread(target=send_later)
        sender.start()
        if ends == "frame then EOF":
            assert reader.read_frame() == P.decode_frame(data)
            assert reader.read_frame() is None
        else:
            with pytest.raises(P.ProtocolError):
                reader.read_frame()
        sender.join()
    finally:
        b.close()


def test_hello_vector_matches_worker_facts_layout():
    v = BY_NAME["hello"]
    facts = worker_facts(
        "adapter:Example", ["tokens", "echo", "add"], 1, thread_safe=True, unsafe_modules=["sqlite3"],
        streaming_tools=["tokens"], idempotent_tools=["echo", "add"],
    )
    assert list(facts) == list(v["body"]), "same keys, same order"
    assert list(facts)[-2:] == ["streaming_tools", "idempotent_tools"]
    for key, value in v["body"].items():
        assert type(facts[key]) is type(value), key
    assert facts["protocol"] == v["body"]["protocol"] == 3
    assert facts["tools"] == ["add", "echo", "tokens"]
    assert facts["unsafe_modules"] == v["body"]["unsafe_modules"]
    assert facts["streaming_tools"] == v["body"]["streaming_tools"] == ["tokens"]
    assert facts["idempotent_tools"] == v["body"]["idempotent_tools"] == ["add", "echo"], "sorted"
    defaults = worker_facts("adapter:Example", ["add"], 1)
    assert (defaults["thread_safe"], defaults["unsafe_modules"]) == (None, [])
    assert (defaults["streaming_tools"], defaults["idempotent_tools"]) == ([], [])


def test_error_vectors_match_the_dispatcher():
    kind, body = Dispatcher({}).invoke("nope", P.CONTENT_JSON, b"")
    assert kind == P.ERROR
    v = BY_NAME["error_unknown_tool"]
    assert P.encode_frame(kind, v["request_id"], body).hex() == v["hex"]
    v = BY_NAME["error_exception"]
    b = v["body"]
    assert error(b["kind"], b["type"], b["message"], b["traceback"])[1] == v["body_text"].encode("utf-8")
    v = BY_NAME["error_cancelled"]
    kind, body = cancelled_error()
    assert P.encode_frame(kind, v["request_id"], body).hex() == v["hex"]
    assert "cancelled" in P.ERROR_KINDS


def test_call_json_vector_is_the_documented_example():
    v = BY_NAME["call_json"]
    assert (v["stream"], v["trace_id"], v["session"]) == (False, "r", "")
    assert v["hex"] == "0000001b" "02" "0000000000000007" "0003616464" "00" "00" "0172" "0000" "7b2261223a317d"


def test_call_body_tool_name_counts_utf8_bytes():
    body = P.encode_call_body("gr\u00f6\u00dfe", P.CONTENT_JSON, b"")
    assert int.from_bytes(body[:2], "big") == 7


def test_call_body_layout_by_hand():
    body = P.encode_call_body("t", P.CONTENT_RAW, b"\x01\x02", stream=True, trace_id="\u00e9", session="s\u00fc")
    assert body == b"\x00\x01t" + b"\x01" + b"\x01" + b"\x02\xc3\xa9" + b"\x00\x03s\xc3\xbc" + b"\x01\x02"
    assert P.decode_call_body(body) == ("t", P.CONTENT_RAW, True, "\u00e9", "s\u00fc", b"\x01\x02")
    assert P.decode_call_body(memoryview(body)) == P.decode_call_body(body)
    plain = P.encode_call_body("t", P.CONTENT_JSON)
    assert plain == b"\x00\x01t\x00\x00\x00\x00\x00"
    assert P.decode_call_body(plain) == ("t", P.CONTENT_JSON, False, "", None, b"")
    assert P.encode_call_body("t", 0, session="") == P.encode_call_body("t", 0, session=None), "'' is no session"


def test_call_flags_other_bits_are_ignored():
    body = bytearray(P.encode_call_body("t", P.CONTENT_JSON, b"{}"))
    body[4] = 0xFE  # every bit but STREAM
    assert P.decode_call_body(bytes(body))[2] is False
    body[4] = 0xFF
    assert P.decode_call_body(bytes(body))[2] is True


_GOOD_CALL = P.encode_call_body("ab", P.CONTENT_JSON, b"", trace_id="tr", session="se")  # 00 02 ab 00 00 02 tr 00 02 se


@pytest.mark.parametrize(
    "body",
    [
        b"", b"\x00", b"\x00\x05abc", b"\x00\x03abc",
        b"\x00\x02ab\x00", b"\x00\x02ab\x00\x00",
        b"\x00\x02ab\x00\x00\x03tr", b"\x00\x02ab\x00\x00\x02tr", b"\x00\x02ab\x00\x00\x02tr\x00",
        _GOOD_CALL[:-1],
        b"\x00\x02\xff\xfe\x00\x00\x00\x00\x00",
        b"\x00\x02ab\x00\x00\x02\xc3\x28\x00\x00",
        b"\x00\x02ab\x00\x00\x00\x00\x01\x80",
    ],
    ids=[
        "empty", "half-length", "name-cut", "no-content-type",
        "no-flags", "no-trace-id-length",
        "trace-id-cut", "no-session-length", "half-session-length",
        "session-cut",
        "name-not-utf8", "trace-id-not-utf8", "session-not-utf8",
    ],
)
def test_malformed_call_bodies(body):
    with pytest.raises(P.ProtocolError):
        P.decode_call_body(body)


def test_good_call_body_decodes():
    assert P.decode_call_body(_GOOD_CALL) == ("ab", 0, False, "tr", "se", b"")


def test_unknown_content_type_is_not_a_protocol_error():
    assert P.decode_call_body(b"\x00\x01x\x07\x00\x00\x00\x00zz") == ("x", 7, False, "", None, b"zz")


def test_credit_body():
    assert P.encode_credit_body(8) == b"\x00\x00\x00\x08"
    assert P.decode_credit_body(b"\x00\x01\x00\x00") == 65536
    for bad in (b"", b"\x00\x00\x08", b"\x00\x00\x00\x00\x08"):
        with pytest.raises(P.ProtocolError):
            P.decode_credit_body(bad)
    for bad in (-1, 2 ** 32):
        with pytest.raises(ValueError):
            P.encode_credit_body(bad)


def test_protocol_constants():
    assert (P.STREAM_CHUNK, P.STREAM_END, P.CREDIT) == (0x05, 0x06, 0x0B)
    assert P.kind_name(P.CREDIT) == "credit"
    assert P.STREAM_WINDOW == 16
    assert P.FLAG_STREAM == 0x01
    assert P.EARLY_CANCEL_MEMORY == 1024
    assert P.ERROR_KINDS.index("cancelled") < P.ERROR_KINDS.index("protocol")


def test_encode_limits():
    with pytest.raises(ValueError):
        P.encode_frame(P.PING, -1)
    with pytest.raises(ValueError):
        P.encode_frame(P.PING, 2 ** 64)
    with pytest.raises(ValueError):
        P.encode_call_body("", 0, b"")
    with pytest.raises(ValueError):
        P.encode_call_body("x" * 65536, 0, b"")
    P.encode_call_body("x" * 65535, 0, b"")
    P.encode_call_body("x", 0, b"", trace_id="t" * 255, session="s" * 65535)
    with pytest.raises(ValueError):
        P.encode_call_body("x", 0, b"", trace_id="t" * 256)
    with pytest.raises(ValueError):
        P.encode_call_body("x", 0, b"", trace_id="\u00e9" * 128)  # 256 bytes of UTF-8
    with pytest.raises(ValueError):
        P.encode_call_body("x", 0, b"", session="s" * 65536)
    with pytest.raises(P.FrameTooLarge):
        P.encode_frame(P.RESULT, 1, bytes(P.MAX_FRAME_LENGTH - 8))
    assert len(P.encode_frame(P.RESULT, 1, bytes(P.MAX_FRAME_LENGTH - 9))) == P.MAX_FRAME_LENGTH + 4


def test_decode_frame_rejects_wrong_lengths():
    good = P.encode_frame(P.PING, 1)
    with pytest.raises(P.ProtocolError):
        P.decode_frame(good[:-1])
    with pytest.raises(P.ProtocolError):
        P.decode_frame(good + b"\x00")


def _reader_for(data):
    a, b = socket.socketpair()
    a.sendall(data)
    a.close()
    return b, P.FrameReader(b)


def test_reader_rejects_oversized_length_before_the_body():
    sock, reader = _reader_for((P.MAX_FRAME_LENGTH + 1).to_bytes(4, "big") + b"\x02")
    with sock, pytest.raises(P.FrameTooLarge) as info:
        reader.read_frame()
    assert info.value.length == P.MAX_FRAME_LENGTH + 1


def test_reader_rejects_length_below_nine():
    sock, reader = _reader_for((8).to_bytes(4, "big") + bytes(8))
    with sock, pytest.raises(P.ProtocolError):
        reader.read_frame()


@pytest.mark.parametrize("cut", [2, 10])
def test_reader_rejects_eof_inside_a_frame(cut):
    sock, reader = _reader_for(P.encode_frame(P.PING, 3)[:cut])
    with sock, pytest.raises(P.ProtocolError):
        reader.read_frame()


def test_reader_large_frame():
    payload = bytes(range(256)) * 40000  # ~10 MB
    frame = P.encode_frame(P.RESULT, 5, P.encode_result_body(P.CONTENT_RAW, payload))
    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (a.sendall(frame), a.close()))
    sender.start()
    try:
        got = P.FrameReader(b).read_frame()
    finally:
        sender.join(10)
        b.close()
    assert got.request_id == 5
    assert P.decode_result_body(got.body) == (P.CONTENT_RAW, payload)
