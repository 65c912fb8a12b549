//! ASN.1 BER TLVs as SGP.22's ES10 functions carry them (tags of 1–3 bytes, definite lengths
//! of 1–3 bytes), for the simulated eUICC. Sans-IO, never panics on hostile input.

/// A tag as its bytes read big-endian (`0xBF2D`, `0x5A`, `0x9F70`).
pub type Tag = u32;

/// One TLV: tag and value (a slice of the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: Tag,
    pub value: &'a [u8],
}

/// Why bytes are no BER TLV list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    #[error("truncated TLV")]
    Truncated,
    #[error("unsupported tag or length form")]
    Unsupported,
}

/// Whether the tag's first byte says "constructed".
pub fn constructed(tag: Tag) -> bool {
    let first = tag.to_be_bytes().into_iter().find(|&b| b != 0).unwrap_or(0);
    first & 0x20 != 0
}

fn read_one(d: &[u8]) -> Result<(Tlv<'_>, usize), BerError> {
    let mut i = 0;
    let first = *d.first().ok_or(BerError::Truncated)?;
    let mut tag = Tag::from(first);
    i += 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *d.get(i).ok_or(BerError::Truncated)?;
            i += 1;
            tag = (tag << 8) | Tag::from(b);
            if b & 0x80 == 0 {
                break;
            }
            if i >= 3 {
                return Err(BerError::Unsupported);
            }
        }
    }
    let l0 = *d.get(i).ok_or(BerError::Truncated)?;
    i += 1;
    let len = match l0 {
        0..=0x7F => usize::from(l0),
        0x81 => {
            let b = *d.get(i).ok_or(BerError::Truncated)?;
            i += 1;
            usize::from(b)
        }
        0x82 => {
            let b = d.get(i..i + 2).ok_or(BerError::Truncated)?;
            i += 2;
            usize::from(u16::from_be_bytes([b[0], b[1]]))
        }
        _ => return Err(BerError::Unsupported),
    };
    let value = d.get(i..i + len).ok_or(BerError::Truncated)?;
    Ok((Tlv { tag, value }, i + len))
}

/// Every TLV of `d`, in order; the whole input must be TLVs.
pub fn parse(d: &[u8]) -> Result<Vec<Tlv<'_>>, BerError> {
    let mut out = Vec::new();
    let mut rest = d;
    while !rest.is_empty() {
        let (t, n) = read_one(rest)?;
        out.push(t);
        rest = &rest[n..];
    }
    Ok(out)
}

/// The value of the first TLV with `tag` in `list`.
pub fn find<'a>(list: &[Tlv<'a>], tag: Tag) -> Option<&'a [u8]> {
    list.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Encodes one TLV (definite length, shortest form).
pub fn tlv(tag: Tag, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    let tb = tag.to_be_bytes();
    let skip = tb.iter().take(3).take_while(|&&b| b == 0).count();
    out.extend_from_slice(&tb[skip..]);
    let n = value.len();
    match n {
        0..=0x7F => out.push(n as u8),
        0x80..=0xFF => out.extend([0x81, n as u8]),
        _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

/// A DER INTEGER's content octets for a non-negative value (`00` prefix when b8 is set).
pub fn uint(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take(7).take_while(|&&x| x == 0).count();
    let mut out = b[skip..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}

/// Reads a non-negative INTEGER's content octets (at most 8 bytes after a leading `00`).
pub fn read_uint(v: &[u8]) -> Option<u64> {
    let v = match v {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => v,
    };
    if v.is_empty() || v.len() > 8 || v[0] & 0x80 != 0 && v.len() == 8 {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_lengths() {
        let d = hex::decode("BF2D00").unwrap();
        let l = parse(&d).unwrap();
        assert_eq!(
            l,
            vec![Tlv {
                tag: 0xBF2D,
                value: &[]
            }]
        );
        let long = tlv(0xBF2D, &[0xAA; 300]);
        assert_eq!(&long[..5], &[0xBF, 0x2D, 0x82, 0x01, 0x2C]);
        assert_eq!(parse(&long).unwrap()[0].value.len(), 300);
        assert_eq!(&tlv(0x5A, &[1; 130])[..3], &[0x5A, 0x81, 130]);
        assert_eq!(tlv(0x9F70, &[1]), vec![0x9F, 0x70, 0x01, 0x01]);
        assert!(constructed(0xBF2D) && constructed(0xA0) && !constructed(0x5A));
        assert_eq!(parse(&[0x5A, 0x05, 1]), Err(BerError::Truncated));
        assert_eq!(parse(&[0x5A, 0x84, 0, 0, 0, 1]), Err(BerError::Unsupported));
        assert_eq!(parse(&[0xBF]), Err(BerError::Truncated));
    }

    #[test]
    fn integers() {
        assert_eq!(uint(1), vec![1]);
        assert_eq!(uint(200), vec![0, 200]);
        assert_eq!(uint(0), vec![0]);
        assert_eq!(read_uint(&[0, 200]), Some(200));
        assert_eq!(read_uint(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(&b);
        }
    }
}
