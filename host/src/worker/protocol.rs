//! The framed host ↔ worker protocol, version 2 (docs/protocol.md): a
//! big-endian `u32` length, a `u8` kind, a `u64` request id, then the body.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame either side accepts (the length field's value).
pub const MAX_FRAME_LEN: usize = 64 << 20;
/// Bytes after the length field that every frame has: kind and request id.
const HEADER_LEN: usize = 1 + 8;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const CALL: u8 = 0x02;
    pub const RESULT: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const CANCEL: u8 = 0x07;
    pub const PING: u8 = 0x08;
    pub const PONG: u8 = 0x09;
    pub const SHUTDOWN: u8 = 0x0a;
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Call { id: u64, tool: String, content_type: ContentType, payload: Bytes },
    Result { id: u64, content_type: ContentType, payload: Bytes },
    Error { id: u64, error: WorkerError },
    Cancel { id: u64 },
    Ping { id: u64 },
    Pong { id: u64 },
    Shutdown,
}

impl Frame {
    /// The whole frame, length prefix included. Only host-to-worker frames
    /// (call, cancel, ping, shutdown) are ever encoded by the host.
    pub fn encode(&self) -> io::Result<Bytes> {
        let (kind, id) = match self {
            Frame::Call { id, .. } => (kind::CALL, *id),
            Frame::Cancel { id } => (kind::CANCEL, *id),
            Frame::Ping { id } => (kind::PING, *id),
            Frame::Shutdown => (kind::SHUTDOWN, 0),
            other => return Err(invalid(format!("the host never sends {other:?}"))),
        };
        let mut body = BytesMut::new();
        if let Frame::Call { tool, content_type, payload, .. } = self {
            let tool_len = u16::try_from(tool.len())
                .map_err(|_| invalid(format!("tool name of {} bytes is too long", tool.len())))?;
            body.reserve(2 + tool.len() + 1 + payload.len());
            body.put_u16(tool_len);
            body.put_slice(tool.as_bytes());
            body.put_u8(content_type.code());
            body.put_slice(payload);
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
            kind::CALL => {
                let mut rest = body;
                if rest.len() < 2 {
                    return Err(invalid("call frame without a tool name".into()));
                }
                let tool_len = rest.get_u16() as usize;
                if rest.len() < tool_len + 1 {
                    return Err(invalid("call frame cut short".into()));
                }
                let tool = String::from_utf8(rest.split_to(tool_len).to_vec())
                    .map_err(|_| invalid("tool name is not UTF-8".into()))?;
                let content_type = ContentType::from_code(rest.get_u8())?;
                Ok(Frame::Call { id, tool, content_type, payload: rest })
            }
            kind::RESULT => {
                let mut rest = body;
                if rest.is_empty() {
                    return Err(invalid("result frame without a content type".into()));
                }
                let content_type = ContentType::from_code(rest.get_u8())?;
                Ok(Frame::Result { id, content_type, payload: rest })
            }
            kind::ERROR => Ok(Frame::Error { id, error: json_body(&body, "error")? }),
            kind::CANCEL => Ok(Frame::Cancel { id }),
            kind::PING => Ok(Frame::Ping { id }),
            kind::PONG => Ok(Frame::Pong { id }),
            kind::SHUTDOWN => Ok(Frame::Shutdown),
            other => Err(invalid(format!("unknown frame kind {other:#04x}"))),
        }
    }
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
            "call" => Frame::Call {
                id,
                tool: vector["tool"].as_str().unwrap().to_owned(),
                content_type: content_type(vector),
                payload: payload(),
            },
            "result" => Frame::Result { id, content_type: content_type(vector), payload: payload() },
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
            if matches!(frame, Frame::Call { .. } | Frame::Cancel { .. } | Frame::Ping { .. } | Frame::Shutdown) {
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
        let long_tool =
            Frame::Call { id: 1, tool: "x".repeat(70_000), content_type: ContentType::Json, payload: Bytes::new() };
        assert!(long_tool.encode().is_err());
    }
}
