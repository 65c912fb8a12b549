//! Hostile bytes from either network side, as property tests (CI runs these; `fuzz/` has the
//! coverage-guided versions): the T=0 terminal fed anything the card side may send, and vpcd's
//! frame reader fed anything vpcd's side may send. No panic, bounded buffers, and a frame that
//! follows garbage is still found.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use simpool::t0::{Exchange, Limits, Step, Tpdu};
use simpool::vpcd::frame::{encode, Decoder, Event, MAX_COMMAND};

/// Commands that mostly parse (Out with any P3, In with 2..=255 data bytes), and some that are
/// arbitrary bytes: with arbitrary bytes only, about 1 % parse and the checks below rarely run.
fn command() -> impl Strategy<Value = Vec<u8>> {
    let ins = any::<u8>().prop_filter("6X/9X are procedure bytes", |i| {
        !matches!(i & 0xF0, 0x60 | 0x90)
    });
    let well_formed = (
        any::<[u8; 4]>(),
        ins,
        prop_oneof![Just(0usize), 2usize..=255],
    )
        .prop_flat_map(|(h, ins, lc)| {
            let head = [h[0], ins, h[2], h[3]];
            if lc == 0 {
                any::<u8>()
                    .prop_map(move |p3| [&head[..], &[p3]].concat())
                    .boxed()
            } else {
                proptest::collection::vec(any::<u8>(), lc)
                    .prop_map(move |body| [&head[..], &[lc as u8], &body].concat())
                    .boxed()
            }
        });
    prop_oneof![
        4 => well_formed,
        1 => proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

/// What the card sends, in pieces as they arrive: single procedure bytes that make sense for
/// this command (INS, ~INS, NULL, status; a procedure byte asking for data must end its piece,
/// as a card then waits), and runs of anything.
fn card_pieces(ins: u8) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let procedure = prop_oneof![
        3 => Just(ins),
        1 => Just(ins ^ 0xFF),
        2 => Just(0x60),
        1 => Just(0x61),
        1 => Just(0x90),
        1 => any::<u8>(),
    ];
    let piece = prop_oneof![
        4 => procedure.prop_map(|b| vec![b]),
        1 => proptest::collection::vec(any::<u8>(), 1..40),
    ];
    proptest::collection::vec(piece, 0..20)
}

#[test]
fn t0_terminal_never_panics_and_stays_in_bounds() {
    let (parsed, sends, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let cases = 2000;
    let input = command().prop_flat_map(|cmd| {
        let ins = cmd.get(1).copied().unwrap_or(0);
        (Just(cmd), card_pieces(ins))
    });
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&input, |(cmd, pieces)| {
            let Ok(tpdu) = Tpdu::parse(&cmd) else {
                return Ok(());
            };
            parsed.fetch_add(1, Ordering::Relaxed);
            let ne = tpdu.ne();
            let body = tpdu.body.len();
            let (mut ex, header) = Exchange::new(tpdu, Limits::default());
            prop_assert_eq!(header.len(), 5);
            for piece in &pieces {
                match ex.feed(piece) {
                    Err(_) => return Ok(()),
                    Ok(Step::Wait) => {}
                    Ok(Step::Send(d)) => {
                        sends.fetch_add(1, Ordering::Relaxed);
                        prop_assert_eq!(d.len(), body);
                        prop_assert!(d.len() >= 2, "never a 1-byte data frame");
                    }
                    Ok(Step::Done(r)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        prop_assert!(r.bytes.len() >= 2);
                        prop_assert!(r.bytes.len() - 2 <= ne);
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    // The checks above ran often enough to mean something (measured: ~79 % parse, ~12 %
    // send their data, ~22 % complete).
    let (parsed, sends, done) = (parsed.into_inner(), sends.into_inner(), done.into_inner());
    let cases = u64::from(cases);
    eprintln!("{cases} cases: {parsed} parsed, {sends} sent data, {done} completed");
    assert!(parsed > cases / 2, "{parsed} of {cases} commands parsed");
    assert!(sends > cases / 20, "{sends} of {cases} exchanges sent data");
    assert!(done > cases / 10, "{done} of {cases} exchanges completed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
