//! Shared helper: turns one fuzz input into a byte stream cut into pieces.
//!
//! Layout: `k` (1 byte), then `k % 8 + 1` cut sizes (1 byte each), then the stream. The stream
//! is cut into pieces whose sizes cycle through the cut sizes. A cut size of 0 gives an empty
//! piece (pushing nothing must be harmless); if every cut size is 0 the stream is one piece.
#![allow(dead_code)]

pub struct Split<'a> {
    pub stream: &'a [u8],
    pub pieces: Vec<&'a [u8]>,
}

pub fn split(data: &[u8]) -> Split<'_> {
    let (cuts, stream) = match data.split_first() {
        None => (&[][..], data),
        Some((&k, rest)) => {
            let n = (usize::from(k) % 8 + 1).min(rest.len());
            rest.split_at(n)
        }
    };
    let mut pieces = Vec::new();
    if cuts.iter().all(|&c| c == 0) {
        pieces.push(stream);
    } else {
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() {
            let n = usize::from(cuts[i % cuts.len()]).min(stream.len() - pos);
            pieces.push(&stream[pos..pos + n]);
            pos += n;
            i += 1;
        }
    }
    Split { stream, pieces }
}
