//! The read side: client bytes into decoded frames. Nothing is held while a connection is
//! idle: bytes are read into a stack buffer during the poll, and only an incomplete frame is
//! kept on the heap until the rest arrives.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::transport::wsframe::{Decoder, Incoming, WsError};

/// Bytes read per poll (on the stack, never kept per connection).
const READ_CHUNK: usize = 4096;

/// What a read brought.
pub(super) enum Read {
    /// Bytes arrived and were decoded (into the caller's `incoming`, maybe none yet).
    Frames,
    /// The peer closed the TCP stream.
    Eof,
    Failed(String),
    Protocol(WsError),
}

/// The read side's state: an incomplete frame (only while one is in flight) and reassembly.
#[derive(Default)]
pub(super) struct ReadState {
    partial: Vec<u8>,
    decoder: Decoder,
}

impl ReadState {
    /// Decodes bytes hyper had already read past the upgrade request.
    pub fn feed(&mut self, data: &[u8], limit: usize, incoming: &mut Vec<Incoming>) -> Read {
        let mut buf = data.to_vec();
        match self.decoder.decode(&mut buf, limit, incoming) {
            Ok(used) => {
                self.partial = buf.split_off(used);
                Read::Frames
            }
            Err(e) => Read::Protocol(e),
        }
    }

    pub fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        limit: usize,
        incoming: &mut Vec<Incoming>,
    ) -> Poll<Read> {
        // Not zeroed: this runs on every wake-up, and only the bytes read are looked at.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Read::Failed(e.to_string())),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Read::Eof);
                }
                let result = if self.partial.is_empty() {
                    let data = rb.filled_mut();
                    self.decoder.decode(data, limit, incoming).map(|used| {
                        if used < n {
                            self.partial.extend_from_slice(&data[used..]);
                        }
                    })
                } else {
                    self.partial.extend_from_slice(rb.filled());
                    let mut buf = std::mem::take(&mut self.partial);
                    self.decoder.decode(&mut buf, limit, incoming).map(|used| {
                        buf.drain(..used);
                        if buf.capacity() > 2 * READ_CHUNK && buf.len() < READ_CHUNK {
                            buf.shrink_to_fit();
                        }
                        self.partial = buf;
                    })
                };
                match result {
                    Ok(()) => Poll::Ready(Read::Frames),
                    Err(e) => Poll::Ready(Read::Protocol(e)),
                }
            }
        }
    }
}
