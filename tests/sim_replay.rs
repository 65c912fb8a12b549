//! The simulator answers the manual's request bytes with the manual's reply bytes, on TCP.

mod common;

use std::time::Duration;

use simpool::sim::algo::run_gsm;
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("reply within 5 s")
        .expect("read");
    buf
}

/// Proves that the previous request got no reply: the answer to a request sent now (READ
/// VERSION) must be the very next bytes on the connection.
async fn nothing_more(s: &mut TcpStream) {
    let version = common::case("read-version");
    s.write_all(&version.steps[0].request).await.unwrap();
    let want = version.steps[0].reply.clone().unwrap();
    let got = read_exactly(s, want.len()).await;
    assert_eq!(
        hex::encode_upper(got),
        hex::encode_upper(want),
        "unexpected bytes before the version"
    );
}

#[tokio::test]
async fn simulator_replays_every_manual_example() {
    let sim = SimPool::start("127.0.0.1:0", CardsFile::default_set(), Faults::default())
        .await
        .unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    for case in common::manual_cases() {
        if case.name == "header-to-card-102" {
            // The manual shows this exchange alone; a card answers only once started.
            s.write_all(&common::hex("AA 66 65 01 FF")).await.unwrap();
            let head = read_exactly(&mut s, 5).await;
            read_exactly(&mut s, usize::from(u16::from_be_bytes([head[3], head[4]]))).await;
        }
        for step in &case.steps {
            s.write_all(&step.request).await.unwrap();
            match &step.reply {
                None => nothing_more(&mut s).await,
                Some(want) => {
                    let got = read_exactly(&mut s, want.len()).await;
                    if step.shape_only {
                        // SRES ‖ Kc come from the simulated card's own Ki: compare the shape,
                        // then the values against the card's algorithm.
                        assert_eq!(got[..6], want[..6], "{}", case.name);
                        assert_eq!(got[got.len() - 2..], [0x90, 0x00], "{}", case.name);
                        let rand = common::hex("12305263415263524195637485967463");
                        let rand: [u8; 16] = rand.try_into().unwrap();
                        let expect = sim
                            .with_card(2, |c| run_gsm(&c.profile().algo, &c.profile().ki, &rand))
                            .unwrap();
                        assert_eq!(got[6..10], expect.0, "SRES");
                        assert_eq!(got[10..18], expect.1, "Kc");
                    } else {
                        assert_eq!(
                            hex::encode_upper(&got),
                            hex::encode_upper(want),
                            "{}",
                            case.name
                        );
                    }
                }
            }
        }
    }
    nothing_more(&mut s).await;
}

async fn states(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(&common::hex("AA 66 00 01 03")).await.unwrap();
    let got = read_exactly(s, 5 + 256).await;
    assert_eq!(got[..5], common::hex("AA 44 00 01 00")[..]);
    got[5..].to_vec()
}

#[tokio::test]
async fn slot_states_reflect_start_stop_and_error_indication() {
    let sim = SimPool::start("127.0.0.1:0", CardsFile::default_set(), Faults::default())
        .await
        .unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let st = states(&mut s).await;
    assert_eq!(
        (st[1], st[17], st[100], st[255], st[200]),
        (0x55, 0x55, 0x55, 0x55, 0x00)
    );
    // start cards 18 and 100, then stop 100 and report an error on 5
    s.write_all(&common::hex("AA 66 11 01 FF")).await.unwrap();
    read_exactly(&mut s, 5 + 22).await;
    s.write_all(&common::hex("AA 66 63 01 FF")).await.unwrap();
    let head = read_exactly(&mut s, 5).await;
    read_exactly(&mut s, usize::from(u16::from_be_bytes([head[3], head[4]]))).await;
    let st = states(&mut s).await;
    assert_eq!((st[17], st[99]), (0xAA, 0xAA), "started cards are working");
    s.write_all(&common::hex("AA 66 63 01 00 AA 66 04 01 04 AA 66 25 01 04"))
        .await
        .unwrap();
    let st = states(&mut s).await;
    assert_eq!(st[17], 0xAA, "card 18 still working");
    assert_eq!(st[99], 0x55, "stopped card 100 is idle again");
    assert_eq!(st[4], 0xFF, "card 5 abnormal after the error indication");
    // card 38 holds no card in the default set: the indication changes nothing
    assert_eq!(st[37], 0x00);
}
