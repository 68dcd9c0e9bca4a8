//! MLLP framing: a message travels as `0x0B message 0x1C 0x0D`. The decoder takes bytes as
//! they arrive (a frame split over reads, several frames in one read) and refuses bytes outside
//! a frame, frames over the size limit and a frame cut off by the end of the stream.

/// Start of a frame.
pub const START: u8 = 0x0B;
/// End of a frame (followed by [`CR`]).
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bytes outside an MLLP frame (expected 0x0B, got 0x{0:02X}): is the sender speaking MLLP?")]
    OutsideFrame(u8),
    #[error("the MLLP frame exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the stream ended inside an MLLP frame ({0} bytes without the 0x1C 0x0D end)")]
    Truncated(usize),
}

/// Wraps a message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.extend_from_slice(&[END, CR]);
    out
}

/// An incremental MLLP decoder with a limit on the size of one message.
#[derive(Debug)]
pub struct MllpDecoder {
    buffer: Vec<u8>,
    limit: usize,
    /// How far `buffer` has been searched for the end of the current frame.
    searched: usize,
}

impl MllpDecoder {
    pub fn new(limit: usize) -> MllpDecoder {
        MllpDecoder { buffer: Vec::new(), limit, searched: 1 }
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message (without its framing), `None` when more bytes are needed. After
    /// an error the stream cannot be trusted: the caller answers and closes the connection.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        // Line breaks between frames are tolerated (some senders add them).
        let skip = self.buffer.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        if skip > 0 {
            self.buffer.drain(..skip);
        }
        let &first = self.buffer.first()?;
        if first != START {
            self.buffer.clear();
            return Some(Err(FrameError::OutsideFrame(first)));
        }
        let from = self.searched.max(1);
        match self.buffer[from..].windows(2).position(|w| w == [END, CR]) {
            Some(at) => {
                let end = from + at;
                if end - 1 > self.limit {
                    self.buffer.clear();
                    self.searched = 1;
                    return Some(Err(FrameError::TooLarge { limit: self.limit }));
                }
                let message = self.buffer[1..end].to_vec();
                self.buffer.drain(..end + 2);
                self.searched = 1;
                Some(Ok(message))
            }
            None => {
                if self.buffer.len() - 1 > self.limit + 1 {
                    self.buffer.clear();
                    self.searched = 1;
                    return Some(Err(FrameError::TooLarge { limit: self.limit }));
                }
                // The end marker may straddle reads: search again from its possible first byte.
                self.searched = self.buffer.len().saturating_sub(1).max(1);
                None
            }
        }
    }

    /// Called at the end of the stream: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        let pending = self.buffer.iter().filter(|b| !matches!(b, b'\r' | b'\n')).count();
        if pending == 0 { Ok(()) } else { Err(FrameError::Truncated(self.buffer.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut MllpDecoder) -> Vec<Result<Vec<u8>, FrameError>> {
        std::iter::from_fn(|| decoder.next_message()).collect()
    }

    #[test]
    fn frames_split_over_reads_and_several_per_read() {
        let mut stream = frame(b"MSH|one");
        stream.extend(frame(b"MSH|two"));
        stream.extend(b"\r\n");
        stream.extend(frame(b"MSH|three"));
        // Every way of cutting the stream in two reads gives the same three messages.
        for cut in 0..=stream.len() {
            let mut decoder = MllpDecoder::new(100);
            decoder.push(&stream[..cut]);
            let mut got = all(&mut decoder);
            decoder.push(&stream[cut..]);
            got.extend(all(&mut decoder));
            let want: Vec<_> = [&b"MSH|one"[..], b"MSH|two", b"MSH|three"].iter().map(|m| Ok(m.to_vec())).collect();
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(decoder.finish(), Ok(()));
        }
        // Byte by byte.
        let mut decoder = MllpDecoder::new(100);
        let mut got = Vec::new();
        for b in &stream {
            decoder.push(&[*b]);
            got.extend(all(&mut decoder));
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn oversized_outside_and_truncated_frames_are_errors() {
        let mut decoder = MllpDecoder::new(10);
        decoder.push(&frame(b"0123456789"));
        assert_eq!(decoder.next_message(), Some(Ok(b"0123456789".to_vec())));
        decoder.push(&frame(b"0123456789X"));
        assert_eq!(decoder.next_message(), Some(Err(FrameError::TooLarge { limit: 10 })));
        // Too large is noticed before the end arrives.
        let mut decoder = MllpDecoder::new(10);
        decoder.push(&[START]);
        decoder.push(&[b'x'; 20]);
        assert_eq!(decoder.next_message(), Some(Err(FrameError::TooLarge { limit: 10 })));

        let mut decoder = MllpDecoder::new(10);
        decoder.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(decoder.next_message(), Some(Err(FrameError::OutsideFrame(b'G'))));

        let mut decoder = MllpDecoder::new(100);
        decoder.push(&[START, b'M', b'S', b'H', END]);
        assert_eq!(decoder.next_message(), None);
        assert_eq!(decoder.finish(), Err(FrameError::Truncated(5)));
    }
}
