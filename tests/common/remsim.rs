//! Test peers of the bank: a remote client (what osmo-remsim-client does on the data link) and a
//! scripted osmo-remsim-server (the control link), both speaking RSPRO through simpool's codecs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use simpool::remsim::ipa::{self, Ccm, Decoder, Frame};
use simpool::remsim::rspro::{
    BankSlot, ClientSlot, ComponentIdentity, ComponentType, Msg, Pdu, ResultCode, SlotPhysStatus,
    TpduFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub fn identity(kind: ComponentType, name: &str) -> ComponentIdentity {
    ComponentIdentity {
        kind,
        name: name.into(),
        software: "simpool-test".into(),
        sw_version: "0".into(),
        hw_manufacturer: None,
        hw_model: None,
        hw_serial_nr: None,
        hw_version: None,
        fw_version: None,
    }
}

pub fn cs(client_id: u16, slot_nr: u16) -> ClientSlot {
    ClientSlot { client_id, slot_nr }
}

pub fn bs(bank_id: u16, slot_nr: u16) -> BankSlot {
    BankSlot { bank_id, slot_nr }
}

/// One IPA/RSPRO connection.
pub struct Peer {
    pub stream: TcpStream,
    dec: Decoder,
    buf: Vec<u8>,
    /// PONGs received (answers to our PINGs).
    pub pongs: usize,
}

/// What `recv` got instead of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    Closed,
    Timeout,
}

impl Peer {
    pub fn new(stream: TcpStream) -> Peer {
        stream.set_nodelay(true).unwrap();
        Peer {
            stream,
            dec: Decoder::new(),
            buf: vec![0; 4096],
            pongs: 0,
        }
    }

    pub async fn connect(addr: SocketAddr) -> Peer {
        Peer::new(TcpStream::connect(addr).await.expect("connect"))
    }

    pub async fn send(&mut self, msg: Msg) {
        let bytes = ipa::encode_rspro(&Pdu::new(msg).encode()).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next RSPRO message within `wait`, answering PINGs on the way.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Msg, Gone> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            while let Some(f) = self.dec.next_frame() {
                match f.expect("bank sends valid IPA") {
                    Frame::Rspro(b) => return Ok(Pdu::decode(&b).expect("bank sends RSPRO").msg),
                    Frame::Ccm(Ccm::Ping) => self.send_raw(&ipa::encode_ccm(Ccm::Pong)).await,
                    Frame::Ccm(Ccm::Pong) => self.pongs += 1,
                    _ => {}
                }
            }
            match tokio::time::timeout_at(end, self.stream.read(&mut self.buf)).await {
                Err(_) => return Err(Gone::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Gone::Closed),
                Ok(Ok(n)) => {
                    let b = self.buf[..n].to_vec();
                    self.dec.push(&b);
                }
            }
        }
    }

    pub async fn recv(&mut self) -> Msg {
        self.recv_within(WAIT).await.expect("a message within 5 s")
    }

    /// True if the other side closes the connection within `wait` (messages before are skipped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Err(Gone::Closed) => return true,
                Err(Gone::Timeout) => return false,
                Ok(_) => {}
            }
        }
    }
}

/// A remote client on one client slot.
pub struct Client {
    pub peer: Peer,
    pub slot: ClientSlot,
    /// The bank slot the test expects this client on.
    pub bank: BankSlot,
}

impl Client {
    /// Connects and sends connectClientReq; answers the result code and, when ok, the ATR.
    pub async fn connect(
        addr: SocketAddr,
        slot: ClientSlot,
        bank: BankSlot,
    ) -> (Client, ResultCode, Option<Vec<u8>>) {
        Client::handshake(Peer::connect(addr).await, slot, bank).await
    }

    /// connectClientReq on a connected peer; as [`Client::connect`].
    pub async fn handshake(
        mut peer: Peer,
        slot: ClientSlot,
        bank: BankSlot,
    ) -> (Client, ResultCode, Option<Vec<u8>>) {
        peer.send(Msg::ConnectClientReq {
            identity: identity(ComponentType::Client, "test-client"),
            client_slot: Some(slot),
        })
        .await;
        let result = match peer.recv().await {
            Msg::ConnectClientRes { result, .. } => result,
            m => panic!("expected connectClientRes, got {m:?}"),
        };
        let mut c = Client { peer, slot, bank };
        let atr = if result == ResultCode::Ok {
            Some(c.expect_atr().await)
        } else {
            None
        };
        (c, result, atr)
    }

    /// Waits for setAtrReq for this client and answers it.
    pub async fn expect_atr(&mut self) -> Vec<u8> {
        match self.peer.recv().await {
            Msg::SetAtrReq { slot, atr } => {
                assert_eq!(slot, self.slot);
                self.peer
                    .send(Msg::SetAtrRes {
                        result: ResultCode::Ok,
                    })
                    .await;
                atr
            }
            m => panic!("expected setAtrReq, got {m:?}"),
        }
    }

    pub async fn send_tpdu(&mut self, to: BankSlot, data: &[u8]) {
        self.peer
            .send(Msg::TpduModemToCard {
                from_client: self.slot,
                to_bank: to,
                flags: TpduFlags::default(),
                data: data.to_vec(),
            })
            .await;
    }

    /// One exchange with the mapped card; answers data ‖ SW.
    pub async fn transmit(&mut self, data: &[u8]) -> Vec<u8> {
        let bank = self.bank;
        self.send_tpdu(bank, data).await;
        self.expect_answer().await
    }

    pub async fn expect_answer(&mut self) -> Vec<u8> {
        match self.peer.recv().await {
            Msg::TpduCardToModem {
                from_bank,
                to_client,
                data,
                ..
            } => {
                assert_eq!(from_bank, self.bank, "answer from the mapped bank slot");
                assert_eq!(to_client, self.slot, "answer to this client");
                data
            }
            m => panic!("expected tpduCardToModem, got {m:?}"),
        }
    }

    /// client-shell's RESET: VCC off with reset active.
    pub async fn reset(&mut self) {
        self.peer
            .send(Msg::ClientSlotStatusInd {
                from_client: self.slot,
                to_bank: self.bank,
                status: SlotPhysStatus {
                    reset_active: true,
                    vcc_present: Some(false),
                    clk_active: Some(false),
                    card_present: Some(true),
                },
            })
            .await;
    }

    /// SELECT by FID; answers SW1.
    pub async fn select(&mut self, fid: [u8; 2]) -> u8 {
        let r = self
            .transmit(&[0xA0, 0xA4, 0x00, 0x00, 0x02, fid[0], fid[1]])
            .await;
        r[r.len() - 2]
    }

    pub async fn read_binary(&mut self, len: u8) -> Vec<u8> {
        let mut r = self.transmit(&[0xA0, 0xB0, 0x00, 0x00, len]).await;
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "READ BINARY ok");
        r.truncate(r.len() - 2);
        r
    }

    pub async fn iccid(&mut self) -> String {
        assert_eq!(self.select([0x3F, 0x00]).await, 0x9F);
        assert_eq!(self.select([0x2F, 0xE2]).await, 0x9F);
        simpool::sim::profile::decode_iccid(&self.read_binary(10).await)
    }

    pub async fn imsi(&mut self) -> Option<String> {
        assert_eq!(self.select([0x3F, 0x00]).await, 0x9F);
        assert_eq!(self.select([0x7F, 0x20]).await, 0x9F);
        assert_eq!(self.select([0x6F, 0x07]).await, 0x9F);
        simpool::sim::profile::decode_imsi(&self.read_binary(9).await)
    }
}

/// A scripted osmo-remsim-server: accepts the bank's control connections.
pub struct Server {
    pub listener: TcpListener,
}

impl Server {
    pub async fn bind() -> Server {
        Server {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accepts the bank, checks connectBankReq, answers ok; answers (bank id, slots).
    pub async fn accept_bank(&self) -> (Peer, u16, u16) {
        let (s, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the bank connects within 5 s")
            .unwrap();
        let mut peer = Peer::new(s);
        let (bank_id, slots) = match peer.recv().await {
            Msg::ConnectBankReq {
                identity,
                bank_id,
                number_of_slots,
            } => {
                assert_eq!(identity.kind, ComponentType::Bankd);
                (bank_id, number_of_slots)
            }
            m => panic!("expected connectBankReq, got {m:?}"),
        };
        peer.send(Msg::ConnectBankRes {
            identity: identity(ComponentType::Server, "test-server"),
            result: ResultCode::Ok,
        })
        .await;
        (peer, bank_id, slots)
    }
}

/// Sends createMappingReq and answers the bank's result.
pub async fn map(server: &mut Peer, client: ClientSlot, bank: BankSlot) -> ResultCode {
    server.send(Msg::CreateMappingReq { client, bank }).await;
    match server.recv().await {
        Msg::CreateMappingRes { result } => result,
        m => panic!("expected createMappingRes, got {m:?}"),
    }
}

pub async fn unmap(server: &mut Peer, client: ClientSlot, bank: BankSlot) -> ResultCode {
    server.send(Msg::RemoveMappingReq { client, bank }).await;
    match server.recv().await {
        Msg::RemoveMappingRes { result } => result,
        m => panic!("expected removeMappingRes, got {m:?}"),
    }
}

/// docs/rspro.md notation: hex bytes and "quoted ASCII".
pub fn bytes(spec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in spec.split('"').enumerate() {
        if i % 2 == 1 {
            out.extend_from_slice(part.as_bytes());
        } else {
            let h: String = part.chars().filter(|c| !c.is_whitespace()).collect();
            out.extend(hex::decode(h).expect("hex"));
        }
    }
    out
}

/// The IPA frames captured between the real osmo-remsim 1.0.0 binaries
/// (`tests/vectors/rspro-1.0.0.txt`), in the file's order.
pub fn captured() -> Vec<(&'static str, Vec<u8>)> {
    sections(include_str!("../vectors/rspro-1.0.0.txt"))
}

/// `[name]` sections of lines in [`bytes`] notation (`#` comments and blank lines skipped),
/// each section's lines joined into one frame.
pub fn sections(text: &str) -> Vec<(&str, Vec<u8>)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name, String::new()));
        } else {
            let (_, spec) = out.last_mut().expect("a [name] before the bytes");
            spec.push(' ');
            spec.push_str(line);
        }
    }
    out.into_iter().map(|(n, spec)| (n, bytes(&spec))).collect()
}
