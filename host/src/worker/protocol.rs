//! The framed host ↔ worker protocol, version 1 (docs/protocol.md): a
//! big-endian `u32` length, a `u8` kind, a `u64` request id, then the body.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const PROTOCOL_VERSION: u32 = 1;
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
