//! The framed host ↔ worker protocol, version 3 (docs/protocol.md): a
//! big-endian `u32` length, a `u8` kind, a `u64` request id, then the body.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const PROTOCOL_VERSION: u32 = 3;
/// Chunks a streaming call may have unacknowledged (docs/protocol.md,
/// "Backpressure").
pub const STREAM_WINDOW: u32 = 16;
/// The CALL flag of a call whose caller reads a stream.
const FLAG_STREAM: u8 = 0x01;
/// Largest frame either side accepts (the length field's value).
pub const MAX_FRAME_LEN: usize = 64 << 20;
/// Bytes after the length field that every frame has: kind and request id.
const HEADER_LEN: usize = 1 + 8;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const CALL: u8 = 0x02;
    pub const RESULT: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const STREAM_CHUNK: u8 = 0x05;
    pub const STREAM_END: u8 = 0x06;
    pub const CANCEL: u8 = 0x07;
    pub const PING: u8 = 0x08;
    pub const PONG: u8 = 0x09;
    pub const SHUTDOWN: u8 = 0x0a;
    pub const CREDIT: u8 = 0x0b;
}

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// UTF-8 JSON; for a call, an object of keyword arguments.
    Json,
    /// Opaque bytes.
    Raw,
}

impl ContentType {
    fn code(self) -> u8 {
        match self {
            ContentType::Json => 0,
            ContentType::Raw => 1,
        }
    }

    fn from_code(code: u8) -> io::Result<Self> {
        match code {
            0 => Ok(ContentType::Json),
            1 => Ok(ContentType::Raw),
            other => Err(invalid(format!("unknown content type {other}"))),
        }
    }
}

/// What a worker says about itself once it is ready.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub pid: u32,
    pub python_version: String,
    pub implementation: String,
    pub free_threaded_build: bool,
    /// Whether the GIL is on after the adapter's imports.
    pub gil_enabled: bool,
    pub tools: Vec<String>,
    pub adapter: String,
    pub threads: u32,
    pub package_version: String,
    /// The adapter's `thread_safe` declaration; `None` when it made none.
    #[serde(default)]
    pub thread_safe: Option<bool>,
    /// Loaded modules known to be unsafe to share across threads (only
    /// looked for with thread-safety checks on).
    #[serde(default)]
    pub unsafe_modules: Vec<String>,
    /// Tools that answer a stream (generator functions).
    #[serde(default)]
    pub streaming_tools: Vec<String>,
    /// Tools marked `@tool(idempotent=True)`: safe to retry.
    #[serde(default)]
    pub idempotent_tools: Vec<String>,
}

/// A failure the worker reports for one call.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct WorkerError {
    /// unknown_tool, bad_arguments, bad_payload, bad_result, exception,
    /// shutting_down or protocol.
    pub kind: String,
    /// The Python exception type, when there is one.
    #[serde(rename = "type")]
    pub python_type: Option<String>,
    pub message: String,
    pub traceback: Option<String>,
}

/// The longest request id a CALL carries (a one-byte length).
pub const MAX_REQUEST_ID_BYTES: usize = u8::MAX as usize;
/// The longest session key a CALL carries (a two-byte length).
pub const MAX_SESSION_BYTES: usize = u16::MAX as usize;

/// A CALL frame's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: u64,
    pub tool: String,
    pub content_type: ContentType,
    /// The caller reads the answer as a stream.
    pub stream: bool,
    /// The call's request id as callers and logs know it (at most
    /// [`MAX_REQUEST_ID_BYTES`]; the host refuses longer ones, and the
    /// encoder cuts them at a character boundary).
    pub trace_id: String,
    pub session: Option<String>,
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Call(Call),
    Result {
        id: u64,
        content_type: ContentType,
        payload: Bytes,
    },
    Error {
        id: u64,
        error: WorkerError,
    },
    StreamChunk {
        id: u64,
        content_type: ContentType,
        payload: Bytes,
    },
    StreamEnd {
        id: u64,
    },
    Cancel {
        id: u64,
    },
    /// The worker may send `chunks` more chunks of stream `id`.
    Credit {
        id: u64,
        chunks: u32,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    Shutdown,
}

impl Frame {
    /// The whole frame, length prefix included. Only host-to-worker frames
    /// (call, cancel, credit, ping, shutdown) are ever encoded by the host.
    pub fn encode(&self) -> io::Result<Bytes> {
        let (kind, id) = match self {
            Frame::Call(call) => (kind::CALL, call.id),
            Frame::Cancel { id } => (kind::CANCEL, *id),
            Frame::Credit { id, .. } => (kind::CREDIT, *id),
            Frame::Ping { id } => (kind::PING, *id),
            Frame::Shutdown => (kind::SHUTDOWN, 0),
            other => return Err(invalid(format!("the host never sends {other:?}"))),
        };
        let mut body = BytesMut::new();
        match self {
            Frame::Call(call) => call.encode_body(&mut body)?,
            Frame::Credit { chunks, .. } => body.put_u32(*chunks),
            _ => {}
        }
        let len = HEADER_LEN + body.len();
        if len > MAX_FRAME_LEN {
            return Err(invalid(format!("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")));
        }
        let mut frame = BytesMut::with_capacity(4 + len);
        frame.put_u32(len as u32);
        frame.put_u8(kind);
        frame.put_u64(id);
        frame.put_slice(&body);
        Ok(frame.freeze())
    }

    /// Parses one frame's kind, id and body (everything after the length).
    pub fn decode(mut frame: Bytes) -> io::Result<Frame> {
        if frame.len() < HEADER_LEN {
            return Err(invalid(format!("frame of {} bytes is shorter than its header", frame.len())));
        }
        let kind = frame.get_u8();
        let id = frame.get_u64();
        let body = frame;
        match kind {
            kind::HELLO => Ok(Frame::Hello(json_body(&body, "hello")?)),
            kind::CALL => Call::decode(id, body).map(Frame::Call),
            kind::RESULT => {
                let (content_type, payload) = typed_payload(body, "result")?;
                Ok(Frame::Result { id, content_type, payload })
            }
            kind::ERROR => Ok(Frame::Error { id, error: json_body(&body, "error")? }),
            kind::STREAM_CHUNK => {
                let (content_type, payload) = typed_payload(body, "stream chunk")?;
                Ok(Frame::StreamChunk { id, content_type, payload })
            }
            kind::STREAM_END => Ok(Frame::StreamEnd { id }),
            kind::CANCEL => Ok(Frame::Cancel { id }),
            kind::CREDIT => {
                let mut rest = body;
                if rest.len() != 4 {
                    return Err(invalid("credit frame without its 4-byte count".into()));
                }
                Ok(Frame::Credit { id, chunks: rest.get_u32() })
            }
            kind::PING => Ok(Frame::Ping { id }),
            kind::PONG => Ok(Frame::Pong { id }),
            kind::SHUTDOWN => Ok(Frame::Shutdown),
            other => Err(invalid(format!("unknown frame kind {other:#04x}"))),
        }
    }
}

impl Call {
    fn encode_body(&self, body: &mut BytesMut) -> io::Result<()> {
        let tool_len = u16::try_from(self.tool.len())
            .map_err(|_| invalid(format!("tool name of {} bytes is too long", self.tool.len())))?;
        let trace_id = cut_at_char(&self.trace_id, MAX_REQUEST_ID_BYTES);
        let session = self.session.as_deref().unwrap_or("");
        let session_len = u16::try_from(session.len())
            .map_err(|_| invalid(format!("session key of {} bytes is too long (at most 65535)", session.len())))?;
        body.reserve(2 + self.tool.len() + 3 + trace_id.len() + 2 + session.len() + self.payload.len());
        body.put_u16(tool_len);
        body.put_slice(self.tool.as_bytes());
        body.put_u8(self.content_type.code());
        body.put_u8(if self.stream { FLAG_STREAM } else { 0 });
        body.put_u8(trace_id.len() as u8);
        body.put_slice(trace_id.as_bytes());
        body.put_u16(session_len);
        body.put_slice(session.as_bytes());
        body.put_slice(&self.payload);
        Ok(())
    }

    fn decode(id: u64, mut rest: Bytes) -> io::Result<Call> {
        let tool = length_prefixed(&mut rest, 2, "tool name")?;
        if rest.len() < 2 {
            return Err(invalid("call frame cut short".into()));
        }
        let content_type = ContentType::from_code(rest.get_u8())?;
        let stream = rest.get_u8() & FLAG_STREAM != 0;
        let trace_id = length_prefixed(&mut rest, 1, "trace id")?;
        let session = length_prefixed(&mut rest, 2, "session key")?;
        Ok(Call {
            id,
            tool,
            content_type,
            stream,
            trace_id,
            session: Some(session).filter(|s| !s.is_empty()),
            payload: rest,
        })
    }
}

/// A UTF-8 string behind a big-endian length of `width` bytes (1 or 2).
fn length_prefixed(rest: &mut Bytes, width: usize, what: &str) -> io::Result<String> {
    if rest.len() < width {
        return Err(invalid(format!("call frame cut short before its {what}")));
    }
    let len = if width == 1 { rest.get_u8() as usize } else { rest.get_u16() as usize };
    if rest.len() < len {
        return Err(invalid(format!("call frame cut short inside its {what}")));
    }
    String::from_utf8(rest.split_to(len).to_vec()).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// The content type byte and the payload after it (RESULT, STREAM_CHUNK).
fn typed_payload(mut body: Bytes, what: &str) -> io::Result<(ContentType, Bytes)> {
    if body.is_empty() {
        return Err(invalid(format!("{what} frame without a content type")));
    }
    let content_type = ContentType::from_code(body.get_u8())?;
    Ok((content_type, body))
}

/// The longest start of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads the next frame; `None` at a clean end of stream.
pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(invalid(format!("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")));
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Frame::decode(Bytes::from(frame)).map(Some)
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|err| invalid(format!("malformed {what} frame: {err}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// docs/protocol_vectors.json: the golden frames the Python tests check
    /// too.
    fn vectors() -> Vec<Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol_vectors.json");
        let text = std::fs::read_to_string(path).expect("docs/protocol_vectors.json is readable");
        let document: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(document["protocol"], PROTOCOL_VERSION);
        document["vectors"].as_array().unwrap().clone()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    fn content_type(vector: &Value) -> ContentType {
        ContentType::from_code(vector["content_type"].as_u64().unwrap() as u8).unwrap()
    }

    fn expected(vector: &Value) -> Frame {
        let id = vector["request_id"].as_u64().unwrap();
        let payload = || Bytes::from(unhex(vector["payload_hex"].as_str().unwrap()));
        let body = || vector["body_text"].as_str().unwrap().as_bytes();
        match vector["kind"].as_str().unwrap() {
            "hello" => Frame::Hello(serde_json::from_slice(body()).unwrap()),
            "call" => Frame::Call(Call {
                id,
                tool: vector["tool"].as_str().unwrap().to_owned(),
                content_type: content_type(vector),
                stream: vector["stream"].as_bool().unwrap(),
                trace_id: vector["trace_id"].as_str().unwrap().to_owned(),
                session: Some(vector["session"].as_str().unwrap().to_owned()).filter(|s| !s.is_empty()),
                payload: payload(),
            }),
            "result" => Frame::Result { id, content_type: content_type(vector), payload: payload() },
            "stream_chunk" => Frame::StreamChunk { id, content_type: content_type(vector), payload: payload() },
            "stream_end" => Frame::StreamEnd { id },
            "credit" => Frame::Credit { id, chunks: vector["credit"].as_u64().unwrap() as u32 },
            "error" => Frame::Error { id, error: serde_json::from_slice(body()).unwrap() },
            "cancel" => Frame::Cancel { id },
            "ping" => Frame::Ping { id },
            "pong" => Frame::Pong { id },
            "shutdown" => Frame::Shutdown,
            other => panic!("unknown vector kind {other}"),
        }
    }

    #[test]
    fn every_golden_vector_decodes() {
        let vectors = vectors();
        assert!(vectors.len() >= 10);
        for vector in vectors {
            let bytes = unhex(vector["hex"].as_str().unwrap());
            let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(length, bytes.len() - 4, "{}: length prefix", vector["name"]);
            let decoded = Frame::decode(Bytes::from(bytes[4..].to_vec())).unwrap();
            assert_eq!(decoded, expected(&vector), "{}", vector["name"]);
        }
    }

    #[test]
    fn host_frames_encode_to_the_golden_bytes() {
        for vector in vectors() {
            let frame = expected(&vector);
            if matches!(
                frame,
                Frame::Call(_) | Frame::Cancel { .. } | Frame::Credit { .. } | Frame::Ping { .. } | Frame::Shutdown
            ) {
                let encoded = frame.encode().unwrap();
                assert_eq!(encoded.to_vec(), unhex(vector["hex"].as_str().unwrap()), "{}", vector["name"]);
            }
        }
    }

    #[tokio::test]
    async fn frames_read_back_from_a_stream() {
        let frames = [Frame::Ping { id: 3 }, Frame::Shutdown];
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&frame.encode().unwrap());
        }
        let mut reader = &stream[..];
        for frame in frames {
            assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame));
        }
        assert_eq!(read_frame(&mut reader).await.unwrap(), None, "clean end of stream");
    }

    #[tokio::test]
    async fn malformed_input_is_an_error_not_a_panic() {
        let oversized = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(read_frame(&mut &oversized[..]).await.is_err());
        let truncated = [0, 0, 0, 20, 2, 0];
        assert!(read_frame(&mut &truncated[..]).await.is_err());
        for body in [
            &[0x02u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9][..],
            &[0x03, 0, 0, 0, 0, 0, 0, 0, 1][..],
            &[0x7f, 0, 0, 0, 0, 0, 0, 0, 1][..],
            &[0x01, 0, 0, 0, 0, 0, 0, 0, 0, b'{'][..],
        ] {
            assert!(Frame::decode(Bytes::copy_from_slice(body)).is_err(), "{body:?}");
        }
        let call = |tool: &str, session: &str| {
            Frame::Call(Call {
                id: 1,
                tool: tool.to_owned(),
                content_type: ContentType::Json,
                stream: false,
                trace_id: String::new(),
                session: Some(session.to_owned()),
                payload: Bytes::new(),
            })
        };
        assert!(call(&"x".repeat(70_000), "").encode().is_err());
        assert!(call("t", &"s".repeat(70_000)).encode().is_err());
    }

    #[test]
    fn a_long_trace_id_is_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let Frame::Call(call) = Frame::decode(
            Frame::Call(Call {
                id: 4,
                tool: "t".into(),
                content_type: ContentType::Json,
                stream: true,
                trace_id: long,
                session: None,
                payload: Bytes::from_static(b"{}"),
            })
            .encode()
            .unwrap()
            .slice(4..),
        )
        .unwrap() else {
            panic!("a call decodes as a call")
        };
        assert_eq!(call.trace_id, "é".repeat(127));
        assert!(call.stream);
        assert_eq!(call.session, None);
    }
}
