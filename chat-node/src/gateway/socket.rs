//! One client's connection, speaking WebSocket frames ([`super::frame`]): reads land in a
//! buffer on the poll's stack (only the bytes of a frame that has not fully arrived are
//! kept), writes go out as header + shared payload without copying, and only what the
//! kernel has not taken yet is held. Nothing is allocated while a socket is idle.
//!
//! Generic over the stream: a plain TCP socket (taken back out of the HTTP server after the
//! upgrade) or, with TLS on the client port, hyper's upgraded connection.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, FrameError, Incoming, Opcode, Reader};

/// Bytes read from the kernel at a time (on the stack of the poll, not kept).
const READ_CHUNK: usize = 16 * 1024;
/// A text frame whose payload is smaller than this is copied behind its header into one
/// chunk; a larger one goes out as its header plus the shared payload.
const COPY_BELOW: usize = 1024;
/// Chunks handed to one vectored write.
const WRITE_SLICES: usize = 64;

/// A stream a session can run on.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// What a call of [`Socket::progress`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes arrived (kept for [`Socket::parse`]).
    pub read: bool,
    /// The client closed its side.
    pub eof: bool,
    /// The kernel took some of what was queued.
    pub wrote: bool,
}

/// A read that failed: a protocol violation.
pub type ReadError = FrameError;

pub struct Socket<S> {
    stream: S,
    reader: Reader,
    /// Bytes read by [`Socket::progress`] that [`Socket::parse`] has not seen yet.
    arrived: Vec<u8>,
    /// What is still to be written, in order.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Everything was handed to the stream, which has not flushed it yet (TLS).
    unflushed: bool,
    max_message: usize,
}

impl<S: Stream> Socket<S> {
    /// A socket over `stream`; `pre_read` is what the HTTP server had read past the upgrade
    /// request (it comes first).
    pub fn new(stream: S, pre_read: &[u8], max_message: usize) -> Self {
        Self {
            stream,
            reader: Reader::default(),
            arrived: pre_read.to_vec(),
            out: VecDeque::new(),
            out_bytes: 0,
            unflushed: false,
            max_message,
        }
    }

    /// Whether bytes wait to be parsed (the pre-read ones, at the start).
    pub fn has_arrived(&self) -> bool {
        !self.arrived.is_empty()
    }

    /// Wait until something happens: queued bytes are taken by the kernel, or (when `read`)
    /// bytes arrive or the client closes. Cancel-safe: what was read is kept in the socket.
    pub async fn progress(&mut self, read: bool) -> io::Result<Progress> {
        poll_fn(|cx| self.poll_progress(cx, read)).await
    }

    fn poll_progress(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<io::Result<Progress>> {
        let mut done = Progress {
            wrote: self.poll_write_out(cx)?,
            ..Progress::default()
        };
        if read {
            // Left uninitialised: zeroing 16 KiB on every poll was a third of the node's
            // instructions per message (callgrind, 2026-12-05). A TCP stream reads into it
            // as it is; a stream that needs it initialised (TLS) zeroes only what it uses.
            let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut buf);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => done.eof = true,
                Poll::Ready(Ok(())) => {
                    self.arrived.extend_from_slice(buf.filled());
                    done.read = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if done == Progress::default() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(done))
        }
    }

    /// Write what the kernel takes now. Returns whether it took anything.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut wrote = false;
        while !self.out.is_empty() {
            let slices: [IoSlice<'_>; WRITE_SLICES] =
                std::array::from_fn(|i| IoSlice::new(self.out.get(i).map_or(&[][..], |c| &c[..])));
            let used = self.out.len().min(WRITE_SLICES);
            match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..used]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(mut n)) => {
                    wrote = true;
                    self.unflushed = true;
                    self.out_bytes -= n;
                    while n > 0 {
                        let Some(first) = self.out.front_mut() else {
                            break;
                        };
                        if n >= first.len() {
                            n -= first.len();
                            self.out.pop_front();
                        } else {
                            first.advance(n);
                            n = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(wrote),
            }
        }
        // Nothing left to hand over: give the queue's memory back, and flush (a TLS stream
        // may hold the last record).
        if self.out.capacity() > 8 {
            self.out = VecDeque::new();
        }
        if self.unflushed {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    /// Write what the kernel takes now, without waiting.
    pub fn write_now(&mut self) -> io::Result<()> {
        let waker = std::task::Waker::noop();
        self.poll_write_out(&mut Context::from_waker(waker))
            .map(|_| ())
    }

    /// Parse what arrived, handing each complete message to `on`; stop early when `on`
    /// returns false (the rest waits in the reader: [`Socket::resume`]). Returns whether it
    /// paused.
    pub fn parse(&mut self, on: impl FnMut(Incoming) -> bool) -> Result<bool, ReadError> {
        let arrived = std::mem::take(&mut self.arrived);
        self.reader.feed(&arrived, self.max_message, on)
    }

    /// Go on with what a paused parse kept, without reading more.
    pub fn resume(&mut self, on: impl FnMut(Incoming) -> bool) -> Result<bool, ReadError> {
        self.reader.feed(&[], self.max_message, on)
    }

    /// Queue a text frame carrying `payload` (valid UTF-8, as every server frame is).
    pub fn queue_text(&mut self, payload: Bytes) {
        let (h, n) = frame::header(Opcode::Text, payload.len());
        if payload.len() < COPY_BELOW {
            let mut chunk = Vec::with_capacity(n + payload.len());
            chunk.extend_from_slice(&h[..n]);
            chunk.extend_from_slice(&payload);
            self.push(Bytes::from(chunk));
        } else {
            self.push(Bytes::copy_from_slice(&h[..n]));
            self.push(payload);
        }
    }

    /// Queue a whole frame (a pong, a close).
    pub fn queue_frame(&mut self, frame: Bytes) {
        self.push(frame);
    }

    fn push(&mut self, chunk: Bytes) {
        self.out_bytes += chunk.len();
        self.out.push_back(chunk);
    }

    /// Bytes queued that the stream has not taken (or flushed) yet.
    pub fn pending(&self) -> usize {
        self.out_bytes + usize::from(self.unflushed)
    }

    /// Write everything queued, waiting for the kernel, for at most `within`; then shut the
    /// write side down.
    pub async fn finish(&mut self, within: std::time::Duration) -> io::Result<()> {
        let write = async {
            while self.pending() > 0 {
                self.progress(false).await?;
            }
            poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await
        };
        tokio::time::timeout(within, write)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}
