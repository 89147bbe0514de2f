//! The write side: frames on their way to the kernel, and the one place a `writev` is laid
//! out. Each frame goes as two slices, its header (on the stack) and its payload (the shared
//! `Frame` itself, never copied), and a socket's whole backlog goes in one call. The direct path
//! ([`DirectTcp`](super::direct::DirectTcp)) and the task's own writes both use [`writev`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

use super::direct::TakeUnfinished;
use crate::protocol::{message, Frame};
use crate::transport::wsframe;

/// How long a closing handshake may take to flush.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames handed to one `writev` (two slices each, within Linux's `IOV_MAX` of 1024): a
/// socket's backlog goes out in one call.
pub(super) const MAX_FRAMES: usize = 512;
/// Frames laid out on the stack; more take one allocation per `writev`.
const INLINE_FRAMES: usize = 8;

/// Something that goes on the wire as one WebSocket frame: a header (maybe empty) and a payload.
pub(super) trait Wire {
    /// Writes the header into `out`; returns its length.
    fn header(&self, out: &mut [u8; 10]) -> usize;
    fn payload(&self) -> &[u8];
    /// Header and payload: the bytes this frame takes on the wire.
    fn wire_len(&self) -> usize;
}

/// A server message as a WebSocket text frame (header added on write).
impl Wire for Frame {
    fn header(&self, out: &mut [u8; 10]) -> usize {
        wsframe::encode_header(wsframe::OP_TEXT, self.len(), out)
    }

    fn payload(&self) -> &[u8] {
        self.as_bytes()
    }

    fn wire_len(&self) -> usize {
        wsframe::header_len(self.len()) + self.len()
    }
}

/// One frame in the task's write queue: a shared text `Frame` or raw bytes (control frames,
/// already encoded).
pub(super) enum Out {
    Text(Frame),
    Raw(Vec<u8>),
}

impl Wire for Out {
    fn header(&self, out: &mut [u8; 10]) -> usize {
        match self {
            Out::Text(f) => f.header(out),
            Out::Raw(_) => 0,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Out::Text(f) => f.as_bytes(),
            Out::Raw(b) => b,
        }
    }

    fn wire_len(&self) -> usize {
        match self {
            Out::Text(f) => f.wire_len(),
            Out::Raw(b) => b.len(),
        }
    }
}

/// Lays the first `n` of `frames` out as slices, less the `skip` bytes of the first already
/// written, and hands them to `write` in one call. The usual case (a frame or a few) is laid
/// out on the stack without touching more of it than it needs; a long backlog (a burst) takes
/// one allocation per call.
pub(super) fn writev<'a, W: Wire + 'a, R>(
    frames: impl Iterator<Item = &'a W>,
    n: usize,
    skip: usize,
    write: impl FnOnce(&[IoSlice<'_>]) -> R,
) -> R {
    if n <= INLINE_FRAMES {
        let mut headers = [[0u8; 10]; INLINE_FRAMES];
        let mut slices = [IoSlice::new(&[]); 2 * INLINE_FRAMES];
        let count = lay_out(frames.take(n), skip, &mut headers, &mut slices);
        write(&slices[..count])
    } else {
        let mut headers = vec![[0u8; 10]; n];
        let mut slices = vec![IoSlice::new(&[]); 2 * n];
        let count = lay_out(frames.take(n), skip, &mut headers, &mut slices);
        write(&slices[..count])
    }
}

/// Fills `slices` with each frame's header and payload, skipping `skip` bytes from the start;
/// returns how many slices are in use.
fn lay_out<'a: 'b, 'b, W: Wire + 'a>(
    frames: impl Iterator<Item = &'a W>,
    mut skip: usize,
    headers: &'b mut [[u8; 10]],
    slices: &mut [IoSlice<'b>],
) -> usize {
    let mut count = 0;
    for (frame, header) in frames.zip(headers.iter_mut()) {
        let hlen = frame.header(header);
        let header: &'b [u8; 10] = header;
        for part in [&header[..hlen], frame.payload()] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[skip..]);
            skip = 0;
            count += 1;
        }
    }
    count
}

/// Where `written` more bytes leave frames of wire lengths `lens`, the first with `offset`
/// bytes already out: how many frames are now wholly written, and how much of the next.
pub(super) fn advance(
    lens: impl Iterator<Item = usize>,
    offset: usize,
    written: usize,
) -> (usize, usize) {
    let mut left = offset + written;
    let mut whole = 0;
    for len in lens {
        if left < len {
            return (whole, left);
        }
        left -= len;
        whole += 1;
    }
    (whole, 0)
}

/// Frames waiting for the kernel; the first may be partly written.
#[derive(Default)]
pub(super) struct WriteQueue {
    pub frames: VecDeque<Out>,
    /// Bytes of the first frame (header + payload) already written.
    pub offset: usize,
}

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn push(&mut self, out: Out) {
        self.frames.push_back(out);
    }

    /// Keeps only a partly written first frame (it must be finished to keep the stream valid).
    pub fn truncate_unsent(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
    }

    /// Puts a frame a direct write left unfinished first. Asked right after each take from
    /// the outbox: the outbox was idle when the direct write began the frame, so this queue
    /// was written out then, and whatever was just taken was pushed later.
    pub fn finish_first(&mut self, io: &impl TakeUnfinished) {
        if let Some(u) = io.take_unfinished() {
            debug_assert_eq!(self.offset, 0, "one frame in flight at a time");
            self.frames.push_front(Out::Text(u.frame));
            self.offset = u.written;
        }
    }

    /// Writes as much as the socket takes; `Ready(Ok)` once everything is written.
    pub fn poll_flush<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<std::io::Result<()>> {
        while !self.frames.is_empty() {
            let n = self.frames.len().min(MAX_FRAMES);
            let result = writev(self.frames.iter(), n, self.offset, |slices| {
                Pin::new(&mut *io).poll_write_vectored(cx, slices)
            });
            let written = match std::task::ready!(result) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(w) => w,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let lens = self.frames.iter().take(n).map(Wire::wire_len);
            let (whole, offset) = advance(lens, self.offset, written);
            self.frames.drain(..whole);
            self.offset = offset;
        }
        // Written out: the buffer goes too. An idle connection holds none, and since the hub
        // defers every frame (a subscriber's `subscription_succeeded` included), nearly every
        // connection's task has had frames in hand: kept, a small buffer cost each idle
        // connection ~0.25 KiB (measured, idle-10k 2.59 → 2.85 KiB).
        self.frames = VecDeque::new();
        Pin::new(&mut *io).poll_flush(cx)
    }

    /// Writes what is queued, a `pusher:error` with the code when asked, and a close frame,
    /// bounded by [`CLOSE_TIMEOUT`]; `true` when all of it was written in time.
    pub async fn close<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        code: u16,
        reason: &str,
        with_error: bool,
    ) -> bool {
        if with_error {
            let error = Frame::from(message::error(Some(code), reason));
            self.push(Out::Text(error));
        }
        self.push(Out::Raw(wsframe::close_frame(code, reason)));
        let flush = poll_fn(|cx| self.poll_flush(cx, io));
        matches!(tokio::time::timeout(CLOSE_TIMEOUT, flush).await, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_counts_whole_frames_and_the_rest_of_the_next() {
        assert_eq!(advance([5, 5, 5].into_iter(), 0, 0), (0, 0));
        assert_eq!(advance([5, 5, 5].into_iter(), 0, 7), (1, 2));
        assert_eq!(advance([5, 5, 5].into_iter(), 2, 3), (1, 0));
        assert_eq!(advance([5, 5, 5].into_iter(), 4, 11), (3, 0));
    }

    #[test]
    fn lay_out_skips_what_is_written_and_sends_headers_beside_payloads() {
        let frames: Vec<Out> = vec![
            Out::Text(Frame::from("abc")),
            Out::Raw(vec![0x89, 0]),
            Out::Text(Frame::from("de")),
        ];
        let flat = |skip| {
            writev(frames.iter(), 3, skip, |slices| {
                slices.iter().flat_map(|s| s.to_vec()).collect::<Vec<u8>>()
            })
        };
        let all = [
            vec![0x81, 3],
            b"abc".to_vec(),
            vec![0x89, 0],
            vec![0x81, 2],
            b"de".to_vec(),
        ]
        .concat();
        assert_eq!(flat(0), all);
        assert_eq!(flat(3), all[3..]);
        // The stack and heap layouts agree.
        let many: Vec<Frame> = (0..INLINE_FRAMES + 1)
            .map(|i| Frame::from(i.to_string()))
            .collect();
        let bytes = |n| {
            writev(many.iter(), n, 0, |s| {
                s.iter().map(|s| s.len()).sum::<usize>()
            })
        };
        assert_eq!(bytes(INLINE_FRAMES + 1), bytes(INLINE_FRAMES) + 3);
    }
}
