//! The EFs of a simulated SIM that a cards file may override, with their shape. A leaf module:
//! [`super::profile`] checks `files` overrides here without knowing the file system, and
//! [`super::fs`] builds its tree to match (its tests check that tree and list agree).

/// How an EF's content is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Any length 1..=65535.
    Transparent,
    /// Linear fixed or cyclic: 1..=254 records of `len` bytes.
    Records { len: usize },
}

const T: Shape = Shape::Transparent;
const fn r(len: usize) -> Shape {
    Shape::Records { len }
}

/// Every EF of the GSM file tree, by path from the MF (DF.GSM as `7F20`).
pub const GSM_EFS: &[(&str, Shape)] = &[
    ("3F00/2FE2", T),
    ("3F00/7F10/6F3A", r(30)),
    ("3F00/7F10/6F3B", r(30)),
    ("3F00/7F10/6F3C", r(176)),
    ("3F00/7F10/6F40", r(30)),
    ("3F00/7F10/6F42", r(40)),
    ("3F00/7F10/6F43", T),
    ("3F00/7F10/6F44", r(30)),
    ("3F00/7F20/6F05", T),
    ("3F00/7F20/6F07", T),
    ("3F00/7F20/6F20", T),
    ("3F00/7F20/6F30", T),
    ("3F00/7F20/6F31", T),
    ("3F00/7F20/6F37", T),
    ("3F00/7F20/6F38", T),
    ("3F00/7F20/6F39", r(3)),
    ("3F00/7F20/6F3E", T),
    ("3F00/7F20/6F3F", T),
    ("3F00/7F20/6F41", T),
    ("3F00/7F20/6F46", T),
    ("3F00/7F20/6F74", T),
    ("3F00/7F20/6F78", T),
    ("3F00/7F20/6F7B", T),
    ("3F00/7F20/6F7E", T),
    ("3F00/7F20/6FAD", T),
    ("3F00/7F20/6FAE", T),
    ("3F00/7F20/6F60", T),
    ("3F00/7F20/6F61", T),
    ("3F00/7F20/6F62", T),
    ("3F00/7F20/6FB7", T),
];

/// FIDs of a `/`-separated path of 4-hex-digit FIDs; 7F21 (DCS1800) is DF.GSM.
pub fn parse_path(path: &str) -> Option<Vec<u16>> {
    path.split('/')
        .map(|p| {
            if p.len() != 4 {
                return None;
            }
            let fid = u16::from_str_radix(p, 16).ok()?;
            Some(if fid == 0x7F21 { 0x7F20 } else { fid })
        })
        .collect()
}

/// The shape of the EF at `path` (any hex case, 7F21 accepted for 7F20).
pub fn shape(path: &str) -> Option<Shape> {
    let want = parse_path(path)?;
    GSM_EFS
        .iter()
        .find(|(p, _)| parse_path(p).as_deref() == Some(&want[..]))
        .map(|&(_, s)| s)
}

/// Checks a `files` override of a cards file: the EF exists and the content fits its shape.
pub fn check_override(path: &str, data: &[u8]) -> Result<(), String> {
    match shape(path).ok_or_else(|| format!("no such EF {path:?}"))? {
        Shape::Transparent => {
            if data.is_empty() || data.len() > 0xFFFF {
                return Err(format!("{path:?}: content must be 1..=65535 bytes"));
            }
        }
        Shape::Records { len } => {
            let n = data.len() / len;
            if !data.len().is_multiple_of(len) || n == 0 || n > 254 {
                return Err(format!(
                    "{path:?}: content must be 1..=254 records of {len} bytes"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(shape("3f00/7f21/6f07"), Some(Shape::Transparent));
        assert_eq!(shape("3F00/7F10/6F3A"), Some(Shape::Records { len: 30 }));
        assert_eq!(shape("3F00/7F20"), None);
        assert_eq!(shape("3F00/7F20/6F0"), None);
        assert!(check_override("3F00/7F10/6F3A", &[0; 60]).is_ok());
        assert!(check_override("3F00/7F10/6F3A", &[0; 31]).is_err());
        assert!(check_override("3F00/2FE2", &[]).is_err());
        assert!(check_override("3F00/7F20/6F99", &[0]).is_err());
    }
}
