//! Writing received UDP datagrams (GSMTAP) as a classic pcap capture, the form Wireshark, tshark
//! and pySim-trace (`gsmtap-pyshark-pcap`, through tshark) open: link type Ethernet, each
//! datagram in a made-up Ethernet + IPv4/IPv6 + UDP frame with its real addresses and ports,
//! checksums filled in, microsecond time stamps. Sans-IO: [`file_header`] and [`record`] build
//! bytes; the caller writes them.
//!
//! Format: libpcap's savefile (`pcap-savefile(5)`), little-endian, magic `a1b2c3d4`, version 2.4.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// DLT_EN10MB: what tshark writes for `-i lo` and what osmocom's test captures use.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Longest frame kept whole (a UDP datagram is at most 65,535 bytes; headers add 62).
pub const SNAPLEN: u32 = 65_535 + 62;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const UDP: u8 = 17;

/// The 24-byte file header.
pub fn file_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone 0, sigfigs 0.
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// One record: the datagram `payload` from `src` to `dst`, received at `at`. Mixed families
/// (an IPv4 peer of an IPv6 socket) are written as IPv6 with IPv4-mapped addresses.
pub fn record(at: SystemTime, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let frame = frame(src, dst, payload);
    let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut r = Vec::with_capacity(16 + frame.len());
    r.extend_from_slice(&(t.as_secs() as u32).to_le_bytes());
    r.extend_from_slice(&t.subsec_micros().to_le_bytes());
    let len = frame.len() as u32;
    r.extend_from_slice(&len.min(SNAPLEN).to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&frame[..frame.len().min(SNAPLEN as usize)]);
    r
}

/// Ethernet (locally administered, all-zero MACs as on loopback), IP and UDP around `payload`.
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(14 + 40 + udp_len);
    f.extend_from_slice(&[0u8; 12]);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = UDP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = checksum(0, &ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, UDP]);
            pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
            udp(&mut f, &pseudo, src.port(), dst.port(), payload);
        }
        (s, d) => {
            let v6 = |a: IpAddr| -> Ipv6Addr {
                match a {
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                    IpAddr::V6(a) => a,
                }
            };
            let (s, d) = (v6(s), v6(d));
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp_len as u16).to_be_bytes());
            f.extend_from_slice(&[UDP, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, UDP]);
            udp(&mut f, &pseudo, src.port(), dst.port(), payload);
        }
    }
    f
}

fn udp(f: &mut Vec<u8>, pseudo: &[u8], sport: u16, dport: u16, payload: &[u8]) {
    let mut h = [0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    let sum = checksum(checksum_add(checksum_add(0, pseudo), &h), payload);
    // 0 means "no checksum" in UDP over IPv4: a computed 0 is sent as FFFF (RFC 768).
    let sum = if sum == 0 { 0xFFFF } else { sum };
    h[6..8].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
}

/// One's-complement sum of 16-bit words (RFC 1071), not yet folded or inverted. Every part but
/// the last must have an even length (headers do).
fn checksum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The finished checksum over what `acc` holds and `data`.
fn checksum(acc: u32, data: &[u8]) -> u16 {
    let mut acc = checksum_add(acc, data);
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_and_an_ipv4_record() {
        let h = file_header();
        assert_eq!(
            hex::encode(h),
            "d4c3b2a1020004000000000000000000\
             3d000100\
             01000000"
        );
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let r = record(
            at,
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:4729".parse().unwrap(),
            &[0x02, 0x04, 0x04],
        );
        assert_eq!(&r[0..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&r[4..8], &123_456u32.to_le_bytes());
        let len = 14 + 20 + 8 + 3;
        assert_eq!(&r[8..12], &(len as u32).to_le_bytes());
        assert_eq!(&r[12..16], &(len as u32).to_le_bytes());
        let f = &r[16..];
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        // A correct header sums to 0 (its checksum included).
        assert_eq!(checksum(0, ip), 0);
        assert_eq!(&ip[12..20], &[127, 0, 0, 1, 127, 0, 0, 1]);
        let udp = &f[34..];
        assert_eq!(&udp[0..4], &[0x9c, 0x40, 0x12, 0x79]);
        let mut pseudo = vec![127, 0, 0, 1, 127, 0, 0, 1, 0, 17, 0, 11];
        pseudo.extend_from_slice(udp);
        assert_eq!(checksum(0, &pseudo), 0, "UDP checksum");
        assert_eq!(&udp[8..], &[0x02, 0x04, 0x04]);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let r = record(
            UNIX_EPOCH,
            "127.0.0.1:1".parse().unwrap(),
            "[::1]:4729".parse().unwrap(),
            &[1, 2, 3, 4, 5],
        );
        let f = &r[16..];
        assert_eq!(&f[12..14], &[0x86, 0xDD]);
        assert_eq!(&f[14 + 4..14 + 6], &13u16.to_be_bytes());
        let src = &f[14 + 8..14 + 24];
        assert_eq!(
            src,
            &"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets()
        );
        let udp = &f[54..];
        let mut pseudo = f[14 + 8..14 + 40].to_vec();
        pseudo.extend_from_slice(&13u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(udp);
        assert_eq!(checksum(0, &pseudo), 0, "UDP checksum over IPv6");
    }
}
