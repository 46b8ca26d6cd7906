//! The server side of WebSocket framing (RFC 6455, section 5), by hand.
//!
//! Why not tungstenite here (the clients and tests use it): its codec keeps a read buffer and
//! a write buffer per socket for the socket's whole life, so an idle socket holds kilobytes
//! (and one that once received a 100,000-character message holds that much), and every
//! frame is copied into the write buffer, once per recipient of a group message. This codec
//! keeps nothing while a socket is idle: the session reads into a buffer on its poll stack
//! and keeps only the bytes of a frame that has not fully arrived; frames go out as a small
//! header plus the shared payload (`Bytes`), written without copying.
//!
//! What it accepts is what the contract needs: masked client frames, text messages (one
//! frame or fragmented), ping, pong and close; binary frames are reported (the session
//! closes with 1003). Everything else is a protocol error (1002).

use bytes::Bytes;

/// An opcode this server handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// What a client's bytes turned into.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message (not yet checked for UTF-8).
    Text(Vec<u8>),
    /// A binary message (refused by the contract).
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The client closes (its code, if it sent one).
    Close(Option<u16>),
}

/// Why a client's bytes are refused, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// 1002 with the reason.
    Protocol(&'static str),
    /// 1009: a message over the size limit.
    TooLarge,
}

/// Incremental parser of a client's frames. Holds only what belongs to a frame or message
/// that has not fully arrived.
#[derive(Debug, Default)]
pub struct Reader {
    /// Bytes of a frame not yet complete.
    partial: Vec<u8>,
    /// The text message being assembled from fragments.
    message: Option<Vec<u8>>,
}

impl Reader {
    /// Whether the reader holds nothing (the socket is between frames).
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.message.is_none()
    }

    /// Bytes the reader holds between calls (a frame or message not yet complete).
    pub fn held(&self) -> usize {
        self.partial.len() + self.message.as_ref().map_or(0, Vec::len)
    }

    /// Parse `input` (bytes just read), calling `on` for each complete message, until the
    /// input is used up (the rest is kept) or `on` returns false (then the unparsed rest is
    /// kept for the next call with empty input, and `feed` returns true: paused). `max`
    /// bounds a message's size.
    pub fn feed(
        &mut self,
        input: &[u8],
        max: usize,
        mut on: impl FnMut(Incoming) -> bool,
    ) -> Result<bool, FrameError> {
        let mut paused = false;
        // Parse from the kept bytes followed by the input: the input alone when nothing is
        // kept (no copy unless a frame is left incomplete), else appended to what is kept
        // (amortised, so a large frame arriving in many reads is not copied again each time).
        let mut kept = std::mem::take(&mut self.partial);
        if !kept.is_empty() {
            kept.extend_from_slice(input);
        }
        let whole: &[u8] = if kept.is_empty() { input } else { &kept };
        let mut at = 0;
        loop {
            let data = &whole[at..];
            let Some(frame) = parse(data, max)? else {
                break;
            };
            let (header_len, payload_len) = (frame.header_len, frame.payload_len);
            let end = header_len + payload_len;
            let mut payload = data[header_len..end].to_vec();
            unmask(&mut payload, frame.mask);
            at += end;
            if let Some(incoming) = self.message_of(frame.fin, frame.opcode, payload, max)?
                && !on(incoming)
            {
                paused = true;
                break;
            }
        }
        if at < whole.len() {
            if kept.is_empty() {
                self.partial = input[at..].to_vec();
            } else {
                kept.drain(..at);
                self.partial = kept;
            }
        }
        Ok(paused)
    }

    /// A frame, put into the message it belongs to.
    fn message_of(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: Vec<u8>,
        max: usize,
    ) -> Result<Option<Incoming>, FrameError> {
        Ok(match opcode {
            Opcode::Ping => Some(Incoming::Ping(payload)),
            Opcode::Pong => Some(Incoming::Pong),
            Opcode::Close => Some(Incoming::Close(close_code(&payload)?)),
            Opcode::Binary => {
                if self.message.is_some() {
                    return Err(FrameError::Protocol(
                        "a new message began inside a fragmented one",
                    ));
                }
                Some(Incoming::Binary)
            }
            Opcode::Text => {
                if self.message.is_some() {
                    return Err(FrameError::Protocol(
                        "a new message began inside a fragmented one",
                    ));
                }
                if fin {
                    Some(Incoming::Text(payload))
                } else {
                    self.message = Some(payload);
                    None
                }
            }
            Opcode::Continuation => {
                let Some(message) = self.message.as_mut() else {
                    return Err(FrameError::Protocol(
                        "a continuation frame with no message to continue",
                    ));
                };
                if message.len() + payload.len() > max {
                    return Err(FrameError::TooLarge);
                }
                message.extend_from_slice(&payload);
                if fin {
                    self.message.take().map(Incoming::Text)
                } else {
                    None
                }
            }
        })
    }
}

/// A frame's header, once enough bytes arrived.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// The header of the frame at the start of `data`, if the whole frame is there.
fn parse(data: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if data.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (data[0], data[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = data.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let Some(bytes) = data.get(2..10) else {
                return Ok(None);
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(bytes);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    if len > max as u64 {
        return Err(FrameError::TooLarge);
    }
    let Some(key) = data.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [key[0], key[1], key[2], key[3]];
    at += 4;
    let payload_len = len as usize;
    if data.len() < at + payload_len {
        return Ok(None);
    }
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: at,
        payload_len,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time, then the rest.
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(v) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol(
            "a close frame's code must be two bytes",
        )),
        _ => Ok(Some(u16::from_be_bytes([payload[0], payload[1]]))),
    }
}

/// The header of a server frame (unmasked) carrying `len` bytes: up to 10 bytes, and how
/// many of them are used.
pub fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode.bits();
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A whole server frame (for control frames and close frames, which are small).
pub fn control(opcode: Opcode, payload: &[u8]) -> Bytes {
    let (h, n) = header(opcode, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code` and `reason` (cut to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    control(Opcode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a client writes it: masked.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn collect(reader: &mut Reader, input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut got = Vec::new();
        let paused = reader.feed(input, 1 << 20, |m| {
            got.push(m);
            true
        })?;
        assert!(!paused);
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let big = "é".repeat(40_000);
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.extend(client_frame(false, 1, &big.as_bytes()[..30_000]));
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, &big.as_bytes()[30_000..]));
        bytes.extend(client_frame(true, 8, &1000u16.to_be_bytes()));
        for step in [1, 3, 7, 100, 4096, bytes.len()] {
            let mut reader = Reader::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                got.extend(collect(&mut reader, chunk).unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Text(b"hello".to_vec()),
                    Incoming::Ping(b"p".to_vec()),
                    Incoming::Text(big.as_bytes().to_vec()),
                    Incoming::Close(Some(1000)),
                ],
                "read in chunks of {step}"
            );
            assert!(reader.is_idle(), "nothing is kept between frames");
        }
    }

    #[test]
    fn what_the_contract_refuses() {
        let mut r = Reader::default();
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert!(matches!(
            collect(&mut r, &unmasked),
            Err(FrameError::Protocol(_))
        ));
        let mut r = Reader::default();
        assert!(matches!(
            collect(&mut r, &client_frame(true, 0x3, b"")),
            Err(FrameError::Protocol(_))
        ));
        let mut r = Reader::default();
        let mut rsv = client_frame(true, 1, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(
            collect(&mut r, &rsv),
            Err(FrameError::Protocol(_))
        ));
        let mut r = Reader::default();
        let too_big = client_frame(true, 1, &vec![b'a'; 2000]);
        let result = r.feed(&too_big, 1000, |_| true);
        assert_eq!(result, Err(FrameError::TooLarge));
        let mut r = Reader::default();
        assert_eq!(
            collect(&mut r, &client_frame(true, 2, b"bin")).unwrap(),
            vec![Incoming::Binary]
        );
        let mut r = Reader::default();
        assert!(matches!(
            collect(&mut r, &client_frame(true, 0, b"orphan")),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn a_paused_reader_keeps_the_rest_for_later() {
        let mut bytes = client_frame(true, 1, b"one");
        bytes.extend(client_frame(true, 1, b"two"));
        let mut r = Reader::default();
        let mut got = Vec::new();
        let paused = r
            .feed(&bytes, 100, |m| {
                got.push(m);
                false
            })
            .unwrap();
        assert!(paused);
        assert_eq!(got, vec![Incoming::Text(b"one".to_vec())]);
        r.feed(&[], 100, |m| {
            got.push(m);
            true
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert!(r.is_idle());
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(header(Opcode::Text, 5).1, 2);
        assert_eq!(header(Opcode::Text, 126).1, 4);
        assert_eq!(header(Opcode::Text, 70_000).1, 10);
        let c = close(1008, "slow");
        assert_eq!(&c[..], &[0x88, 6, 0x03, 0xF0, b's', b'l', b'o', b'w']);
    }
}
