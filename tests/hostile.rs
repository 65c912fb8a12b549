//! Hostile bytes from either network side, as property tests (CI runs these; `fuzz/` has the
//! coverage-guided versions): the T=0 terminal fed anything the card side may send, and vpcd's
//! frame reader fed anything vpcd's side may send. No panic, bounded buffers, and a frame that
//! follows garbage is still found.

use proptest::prelude::*;
use simpool::t0::{Exchange, Limits, Step, Tpdu};
use simpool::vpcd::frame::{encode, Decoder, Event, MAX_COMMAND};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn t0_terminal_never_panics_and_stays_in_bounds(
        cmd in proptest::collection::vec(any::<u8>(), 0..300),
        card in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let Ok(tpdu) = Tpdu::parse(&cmd) else { return Ok(()) };
        let ne = tpdu.ne();
        let body = tpdu.body.len();
        let (mut ex, header) = Exchange::new(tpdu, Limits::default());
        prop_assert_eq!(header.len(), 5);
        let (mut pos, mut i) = (0, 0);
        while pos < card.len() {
            let n = cuts[i % cuts.len()].min(card.len() - pos);
            i += 1;
            match ex.feed(&card[pos..pos + n]) {
                Err(_) => return Ok(()),
                Ok(Step::Wait) => {}
                Ok(Step::Send(d)) => {
                    prop_assert_eq!(d.len(), body);
                    prop_assert!(d.len() >= 2, "never a 1-byte data frame");
                }
                Ok(Step::Done(r)) => {
                    prop_assert!(r.bytes.len() >= 2);
                    prop_assert!(r.bytes.len() - 2 <= ne);
                    return Ok(());
                }
            }
            pos += n;
        }
    }

    #[test]
    fn vpcd_reader_never_panics_stays_bounded_and_resynchronises(
        junk in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(1usize..300, 1..20),
    ) {
        // junk framed as one oversized frame, then a good command: the command must come out.
        let mut stream = ((junk.len().max(MAX_COMMAND + 1)) as u16).to_be_bytes().to_vec();
        stream.extend(&junk);
        stream.resize(2 + junk.len().max(MAX_COMMAND + 1), 0);
        stream.extend(encode(&[0xA0, 0xF2, 0, 0, 0x16]));
        let mut d = Decoder::new();
        let (mut pos, mut i, mut found) = (0, 0, false);
        while pos < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - pos);
            i += 1;
            d.push(&stream[pos..pos + n]);
            pos += n;
            while let Some(ev) = d.next_event() {
                if ev == Event::Command(vec![0xA0, 0xF2, 0, 0, 0x16]) { found = true; }
            }
            prop_assert!(d.buffered() <= 2 + MAX_COMMAND + n);
        }
        prop_assert!(found);
    }

    #[test]
    fn vpcd_reader_takes_any_stream(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
        let mut d = Decoder::new();
        for piece in bytes.chunks(97) {
            d.push(piece);
            while d.next_event().is_some() {}
            prop_assert!(d.buffered() <= 2 + MAX_COMMAND + 97);
        }
    }
}
