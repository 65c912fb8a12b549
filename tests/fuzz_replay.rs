//! The fuzz targets of `fuzz/` on stable Rust, in `cargo test`: each target's body — the very
//! file cargo-fuzz builds — runs over a seed set (the manual's frames and typical T=0 traffic,
//! cut into pieces in several ways), over pseudo-random and mutated inputs for a time budget
//! (`SIMPOOL_FUZZ_SECS`, default 1 s per target), and over `fuzz/corpus/TARGET` and
//! `fuzz/artifacts/TARGET` when a local `cargo fuzz` run left them (so a crash it found replays
//! here). Coverage-guided fuzzing itself stays with `cargo fuzz` (fuzz/README.md).

#![allow(clippy::duplicate_mod)] // each target includes fuzz_targets/common.rs

// The targets say `use libfuzzer_sys::fuzz_target;`. Here that name is this test crate, whose
// `fuzz_target!` (at the end of this file) turns a target's body into a function `run`.
extern crate self as libfuzzer_sys;

mod common;

// `allow`: the targets' `#![no_main]`, which only means something to a crate root.
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/pool_reply_decoder.rs"]
mod pool_reply_decoder;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/pool_request_decoder.rs"]
mod pool_request_decoder;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/profile_codecs.rs"]
mod profile_codecs;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/rspro_decoder.rs"]
mod rspro_decoder;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/sim_card.rs"]
mod sim_card;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/t0_exchange.rs"]
mod t0_exchange;
#[allow(unused_attributes)]
#[path = "../fuzz/fuzz_targets/vpcd_decoder.rs"]
mod vpcd_decoder;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// splitmix64: deterministic, so a failure replays the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A copy of `seed` with a few bytes changed, inserted, dropped, or a piece repeated.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(6) {
                0 if at < v.len() => v[at] = self.next() as u8,
                1 if at < v.len() => v[at] ^= 1 << self.below(8),
                2 => v.insert(at, [0x00, 0x60, 0xAA, 0xFF, 0x44, 0x66][self.below(6)]),
                3 if at < v.len() => {
                    v.remove(at);
                }
                4 => v.truncate(at),
                _ => {
                    let end = (at + 1 + self.below(16)).min(v.len());
                    let piece = v[at.min(end)..end].to_vec();
                    v.splice(at..at, piece);
                }
            }
        }
        v
    }
}

fn time_budget() -> Duration {
    let secs = std::env::var("SIMPOOL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

/// Files a local `cargo fuzz` run left for `target` (corpus and crashes).
fn local_inputs(target: &str) -> Vec<Vec<u8>> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push(bytes);
            }
        }
    }
    out
}

/// Runs `target` over the seeds, the local corpus, then random and mutated inputs until the
/// time budget is spent; returns how many inputs ran.
fn replay(name: &str, target: fn(&[u8]), seeds: Vec<Vec<u8>>, seed: u64) -> u64 {
    let mut n = 0u64;
    for s in seeds.iter().chain(&local_inputs(name)) {
        target(s);
        n += 1;
    }
    let mut rng = Rng(seed);
    let end = Instant::now() + time_budget();
    while Instant::now() < end {
        for _ in 0..64 {
            let input = if seeds.is_empty() || rng.below(4) == 0 {
                let len = rng.below(600);
                rng.bytes(len)
            } else {
                let i = rng.below(seeds.len());
                rng.mutate(&seeds[i])
            };
            target(&input);
            n += 1;
        }
    }
    eprintln!("{name}: {n} inputs ({} seeds)", seeds.len());
    assert!(n >= seeds.len() as u64 + 64, "{name} ran");
    n
}

/// Ways of cutting a stream (the layout of `fuzz_targets/common.rs`): whole, byte by byte,
/// in small and in mixed pieces.
const CUTS: [&[u8]; 4] = [
    &[0, 0],
    &[0, 1],
    &[2, 3, 1, 7],
    &[7, 0, 1, 2, 3, 4, 5, 6, 200],
];

fn cut_ways(stream: &[u8]) -> Vec<Vec<u8>> {
    CUTS.iter().map(|c| [c, stream].concat()).collect()
}

/// Every `>` request and every `<` reply of the manual's vectors.
fn manual(replies: bool) -> Vec<Vec<u8>> {
    common::manual_cases()
        .into_iter()
        .flat_map(|c| c.steps)
        .filter_map(|s| if replies { s.reply } else { Some(s.request) })
        .collect()
}

fn stream_seeds(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = frames.iter().flat_map(|f| cut_ways(f)).collect();
    seeds.extend(cut_ways(&frames.concat()));
    seeds
}

/// The manual's reply frames with every 3rd frame's length wrong as a hostile pool gets it
/// (+3, `FFFF`, 0, −1, +1): streams that take the decoder's wrong-length paths.
fn wrong_lengths(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let frames: Vec<&Vec<u8>> = frames.iter().filter(|f| f.len() >= 5).collect();
    (0..5u16)
        .map(|variant| {
            let mut out = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let mut f = f.to_vec();
                if i % 3 == 1 {
                    let len = u16::from_be_bytes([f[3], f[4]]);
                    let wrong = [len + 3, 0xFFFF, 0, len.saturating_sub(1), len + 1];
                    f[3..5].copy_from_slice(&wrong[usize::from(variant)].to_be_bytes());
                }
                out.extend(f);
            }
            out
        })
        .flat_map(|s| cut_ways(&s))
        .collect()
}

/// Typical T=0 exchanges: command, then what the card sends.
fn t0_traffic() -> Vec<(Vec<u8>, Vec<u8>)> {
    let h = common::hex;
    vec![
        (h("A0A40000023F00"), h("A4 9F17")),
        (h("A0A40000027F20"), h("60 60 A4 9F17")),
        (
            h("A0C0000017"),
            [h("C0"), vec![0x11; 23], h("9000")].concat(),
        ),
        (h("A0B000000A"), h("B0 98680034914128916063 9000")),
        (
            h("A0B0000009"),
            h("4F 08 4F 49 4F 06 4F 10 4F 89 4F 49 4F 10 4F 63 4F 51 9000"),
        ),
        (h("A0F2000016"), h("6C 16")),
        (
            h("A088000010 12305263415263524195637485967463"),
            h("88 9F0C"),
        ),
        (h("A020000108 31323334FFFFFFFF"), h("20 9000")),
        (h("A0D6000002 1234"), h("29 6B00")),
        (
            h("A0B0000000"),
            [h("B0"), vec![0x42; 256], h("9000")].concat(),
        ),
    ]
}

#[test]
fn pool_reply_decoder_replays() {
    replay(
        "pool_reply_decoder",
        pool_reply_decoder::run,
        [stream_seeds(manual(true)), wrong_lengths(&manual(true))].concat(),
        1,
    );
}

#[test]
fn pool_request_decoder_replays() {
    replay(
        "pool_request_decoder",
        pool_request_decoder::run,
        stream_seeds(manual(false)),
        2,
    );
}

#[test]
fn vpcd_decoder_replays() {
    let mut frames: Vec<Vec<u8>> = t0_traffic()
        .into_iter()
        .map(|(cmd, _)| simpool::vpcd::frame::encode(&cmd))
        .collect();
    for control in 0u8..=4 {
        frames.push(simpool::vpcd::frame::encode(&[control]));
    }
    frames.push(vec![0, 0]);
    frames.push([&[0x01, 0x2C][..], &[0xA0; 300]].concat());
    replay("vpcd_decoder", vpcd_decoder::run, stream_seeds(frames), 3);
}

#[test]
fn t0_exchange_replays() {
    let mut seeds = Vec::new();
    for (cmd, card) in t0_traffic() {
        let len = (cmd.len() as u16).to_be_bytes();
        for cut in CUTS {
            seeds.push([&len[..], &cmd, cut, &card].concat());
        }
    }
    replay("t0_exchange", t0_exchange::run, seeds, 4);
}

#[test]
fn sim_card_replays() {
    // what a terminal sends: each header, then its data (for In commands)
    let h = common::hex;
    let terminal = [
        h("A0A4000002"),
        h("3F00"),
        h("A0C0000017"),
        h("A0A4000002"),
        h("7F20"),
        h("A0A4000002"),
        h("6F07"),
        h("A0B0000009"),
        h("A088000010"),
        h("12305263415263524195637485967463"),
        h("A0C000000C"),
        h("A0F2000016"),
        h("A0200001 08"),
        h("31323334FFFFFFFF"),
        h("FF A0F2000016"),
    ]
    .concat();
    let mut seeds = Vec::new();
    // quirks: none; single-byte-out and trailing garbage; NULLs (count next); Milenage; resets
    for quirks in [
        &[0x00][..],
        &[0x03],
        &[0x04, 0x05],
        &[0x08],
        &[0x10],
        &[0x1F, 0x02],
    ] {
        for cut in CUTS {
            seeds.push([quirks, cut, &terminal].concat());
        }
    }
    replay("sim_card", sim_card::run, seeds, 5);
}

#[test]
fn profile_codecs_replays() {
    let h = common::hex;
    let seeds = vec![
        h("98680034914128916063"),
        h("084906108949106351"),
        h("08091010000000810F"),
        h("FFFFFFFFFFFFFFFFFFFF"),
        h("0F"),
        Vec::new(),
    ];
    replay("profile_codecs", profile_codecs::run, seeds, 6);
}

#[test]
fn rspro_decoder_replays() {
    // The frames captured between the real osmo-remsim binaries: each whole (IPA), its RSPRO
    // payload alone, and all of them as one stream after a PING.
    let frames: Vec<Vec<u8>> = common::remsim::captured()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let mut seeds: Vec<Vec<u8>> = frames.iter().map(|f| f[4..].to_vec()).collect();
    seeds.extend(frames.iter().cloned());
    seeds.push([&[0x00, 0x01, 0xFE, 0x00][..], &frames.concat()].concat());
    replay("rspro_decoder", rspro_decoder::run, seeds, 8);
}

/// Stands in for libfuzzer-sys' macro (the targets import it by path: defined after them, it is
/// not in their textual scope): the body becomes `pub fn run`.
#[macro_export]
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}
