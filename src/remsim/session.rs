//! One remote client's connection to the bank as a sans-IO state machine, with time passed in:
//! the client names its slot, gets its mapped card (or waits for a map, a free card, the pool),
//! sends TPDUs and slot status, and the session ends when the map goes, the card fails or the
//! card layer ends the lease. The task in [`super::bank`] only moves bytes and timers: it feeds
//! frames and the card's results in and carries out the [`Action`]s that come out, one at a
//! time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bank::BankStats;
use super::ipa::{Ccm, Frame, IpaError};
use super::maps::{check_tpdu, wants_reset, KeepAlive, KeepAliveAction};
use super::rspro::{
    BankSlot, ClientSlot, ComponentIdentity, Msg, Pdu, ResultCode, RsproError, SlotPhysStatus,
    TpduFlags,
};
use crate::cards::Ended;
use crate::log_once::LogOnce;
use crate::pool::ExchangeError;
use crate::t0;

/// osmo-remsim's keep-alive: PING after 30 s idle, drop after 10 s without answer.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_GRACE: Duration = Duration::from_secs(10);
/// A connection must say which client slot it is within this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Look again for a map or a free card this often (osmo-remsim-bankd: 10 s), besides on every
/// map or lease change.
pub const RETRY_ATTACH: Duration = Duration::from_secs(10);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("peer closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("peer did not take our bytes within {0} s")]
    WriteTimeout(u64),
    #[error("no answer to keep-alive PING")]
    KeepAlive,
    #[error("bad peer: {0}")]
    Ipa(#[from] IpaError),
    #[error("bad peer: undecodable RSPRO: {0}")]
    Rspro(#[from] RsproError),
    #[error("bad peer: {0}")]
    BadPeer(String),
    #[error("server refused the bank: {0:?}")]
    Refused(ResultCode),
    #[error("slot map removed")]
    Unmapped,
    #[error("card failed: {0}")]
    Card(String),
    #[error("superseded by a newer connection of the same client slot")]
    Superseded,
    #[error("bank shutting down")]
    Shutdown,
}

impl End {
    /// The peer broke the protocol (counted as a bad peer).
    pub fn bad_peer(&self) -> bool {
        matches!(self, End::Ipa(_) | End::Rspro(_) | End::BadPeer(_))
    }
}

/// What the session's task is to do next.
#[derive(Debug)]
pub enum Action {
    /// Send these messages to the client (in one write).
    Send(Vec<Msg>),
    /// Send an IPA CCM message.
    Ccm(Ccm),
    /// The connection named its client slot: make it that slot's only connection (an older
    /// one is superseded).
    Claim(ClientSlot),
    /// Find the client's map and take its card; report with [`ClientSession::attached`] or
    /// [`ClientSession::not_attached`].
    Attach(ClientSlot),
    /// Exchange with the card; report with [`ClientSession::answered`].
    Transmit {
        from: ClientSlot,
        to: BankSlot,
        data: Vec<u8>,
    },
    /// Restart the card (the client reset it); report with [`ClientSession::restarted`].
    Restart,
    /// The session is over: close the connection, release the card.
    Close(End),
}

pub struct ClientSession {
    identity: ComponentIdentity,
    peer: String,
    stats: Arc<BankStats>,
    client: Option<ClientSlot>,
    /// The bank slot whose card this session holds.
    active: Option<BankSlot>,
    last_status: SlotPhysStatus,
    /// When to look for a map or a free card again (set while waiting for one).
    retry: Option<Instant>,
    hello_by: Instant,
    keepalive: KeepAlive,
    /// The attach in flight answers connectClientReq.
    answer_connect: bool,
    problem: LogOnce,
    out: VecDeque<Action>,
    closed: bool,
}

impl ClientSession {
    pub fn new(
        identity: ComponentIdentity,
        peer: String,
        stats: Arc<BankStats>,
        now: Instant,
    ) -> ClientSession {
        ClientSession {
            identity,
            peer,
            stats,
            client: None,
            active: None,
            last_status: SlotPhysStatus {
                reset_active: false,
                vcc_present: Some(true),
                clk_active: Some(true),
                card_present: Some(true),
            },
            retry: None,
            hello_by: now + HELLO_TIMEOUT,
            keepalive: KeepAlive::new(KEEPALIVE_IDLE, KEEPALIVE_GRACE, now),
            answer_connect: false,
            problem: LogOnce::default(),
            out: VecDeque::new(),
            closed: false,
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The client slot and the bank slot whose card it has, once it has one.
    pub fn attached_to(&self) -> Option<(ClientSlot, BankSlot)> {
        self.client.zip(self.active)
    }

    pub fn client(&self) -> Option<ClientSlot> {
        self.client
    }

    /// Waiting for a map or a free card (look again when leases change).
    pub fn waiting(&self) -> bool {
        self.retry.is_some()
    }

    /// When [`ClientSession::tick`] wants to be called.
    pub fn deadline(&self) -> Instant {
        let mut at = self.keepalive.next_deadline();
        if let Some(r) = self.retry {
            at = at.min(r);
        }
        if self.client.is_none() {
            at = at.min(self.hello_by);
        }
        at
    }

    /// Who this is, for the log.
    pub fn who(&self) -> String {
        match (&self.client, &self.active) {
            (Some(c), Some(a)) => format!(
                "client {c} ({}) on bank {a} (card {})",
                self.peer,
                super::maps::card_of(*a).map_or("?".into(), |n| n.to_string())
            ),
            (Some(c), None) => format!("client {c} ({})", self.peer),
            _ => format!("client {}", self.peer),
        }
    }

    pub fn close(&mut self, e: End) {
        if !self.closed {
            self.closed = true;
            self.out.clear();
            self.out.push_back(Action::Close(e));
        }
    }

    pub fn tick(&mut self, now: Instant) {
        if self.client.is_none() && now >= self.hello_by {
            return self.close(End::BadPeer(format!(
                "no connectClientReq within {} s",
                HELLO_TIMEOUT.as_secs()
            )));
        }
        match self.keepalive.poll(now) {
            KeepAliveAction::SendPing => self.out.push_back(Action::Ccm(Ccm::Ping)),
            KeepAliveAction::Dead => return self.close(End::KeepAlive),
            KeepAliveAction::Nothing => {}
        }
        if self.retry.is_some_and(|r| r <= now) {
            self.retry = None;
            self.attach(false);
        }
    }

    /// A frame from the client, or why none came.
    pub fn frame(&mut self, f: Result<Frame, End>, now: Instant) {
        self.keepalive.received(now);
        let bytes = match f {
            Err(e) => return self.close(e),
            Ok(Frame::Rspro(bytes)) => bytes,
            Ok(Frame::Ccm(Ccm::Ping)) => return self.out.push_back(Action::Ccm(Ccm::Pong)),
            Ok(Frame::Ccm(Ccm::IdAck)) => return self.out.push_back(Action::Ccm(Ccm::IdAck)),
            Ok(Frame::Ccm(_)) => return,
            Ok(Frame::Other { proto, ext }) => {
                return log::debug!("IPA frame of protocol {proto:02X} ext {ext:?} ignored")
            }
        };
        log::trace!("remsim: {} > {}", self.peer, hex::encode_upper(&bytes));
        match Pdu::decode(&bytes) {
            Ok(pdu) => self.msg(pdu.msg),
            Err(e) => self.close(e.into()),
        }
    }

    fn msg(&mut self, msg: Msg) {
        match msg {
            Msg::ConnectClientReq {
                identity,
                client_slot,
            } => self.connect(identity, client_slot),
            Msg::SetAtrRes { result } => {
                if result != ResultCode::Ok {
                    log::warn!("remsim: {}: setAtrRes {result:?}", self.who());
                }
            }
            Msg::TpduModemToCard {
                from_client,
                to_bank,
                data,
                ..
            } => self.tpdu(from_client, to_bank, data),
            Msg::ClientSlotStatusInd {
                from_client,
                to_bank,
                status,
            } => self.status(from_client, to_bank, status),
            other => log::warn!(
                "remsim: {}: unexpected {} ignored",
                self.who(),
                other.name()
            ),
        }
    }

    fn connect(&mut self, identity: ComponentIdentity, slot: Option<ClientSlot>) {
        if self.client.is_some() {
            return self.close(End::BadPeer("second connectClientReq".into()));
        }
        let Some(cs) = slot else {
            self.out.push_back(Action::Send(vec![Msg::ConnectClientRes {
                identity: self.identity.clone(),
                result: ResultCode::IllegalClientId,
            }]));
            self.closed = true;
            self.out.push_back(Action::Close(End::BadPeer(
                "connectClientReq without client slot".into(),
            )));
            return;
        };
        log::info!(
            "remsim: {} is client {cs} ({} {} {})",
            self.peer,
            identity.name,
            identity.software,
            identity.sw_version
        );
        self.client = Some(cs);
        // A client slot has one connection: a client that reconnects (its old link
        // half-dead, or after a server restart) takes over from its old connection.
        self.out.push_back(Action::Claim(cs));
        self.attach(true);
    }

    /// Looks for this client's map and card. `answer_connect`: this answers connectClientReq
    /// (connectClientRes first); later attempts only send setAtrReq, as osmo-remsim-bankd does.
    fn attach(&mut self, answer_connect: bool) {
        let Some(client) = self.client else { return };
        if self.active.is_some() {
            return;
        }
        self.answer_connect = answer_connect;
        self.out.push_back(Action::Attach(client));
    }

    /// [`Action::Attach`] got the card of bank slot `bank`, started with `atr`.
    pub fn attached(&mut self, bank: BankSlot, atr: Vec<u8>) {
        let Some(client) = self.client else { return };
        self.active = Some(bank);
        self.retry = None;
        self.problem.clear();
        let set_atr = Msg::SetAtrReq { slot: client, atr };
        let msgs = if std::mem::take(&mut self.answer_connect) {
            vec![
                Msg::ConnectClientRes {
                    identity: self.identity.clone(),
                    result: ResultCode::Ok,
                },
                set_atr,
            ]
        } else {
            vec![set_atr]
        };
        self.out.push_back(Action::Send(msgs));
    }

    /// [`Action::Attach`] found no card to give, for this reason: wait and look again.
    pub fn not_attached(&mut self, why: String, now: Instant) {
        // Logged once per distinct reason, not on every retry.
        self.problem
            .warn(&format!("remsim: {}: no card yet", self.who()), &why);
        self.retry = Some(now + RETRY_ATTACH);
        if std::mem::take(&mut self.answer_connect) {
            self.out.push_back(Action::Send(vec![Msg::ConnectClientRes {
                identity: self.identity.clone(),
                result: ResultCode::CardNotPresent,
            }]));
        }
    }

    /// The server's maps changed; `still_mapped`: this session's card is still mapped to it.
    pub fn maps_changed(&mut self, still_mapped: bool) {
        if self.client.is_none() {
            return;
        }
        match self.active {
            Some(_) if !still_mapped => self.close(End::Unmapped),
            Some(_) => {}
            None => self.attach(false),
        }
    }

    /// Some lease was taken or freed: a client waiting for a card looks again.
    pub fn leases_changed(&mut self) {
        if self.retry.is_some() {
            self.attach(false);
        }
    }

    /// The pool link is up again: a client waiting for its card gets it now.
    pub fn pool_up(&mut self) {
        if self.active.is_none() && self.client.is_some() {
            self.attach(false);
        }
    }

    /// The card layer ended this session's lease (pool connection changed, card taken away).
    pub fn lease_ended(&mut self, e: Ended) {
        self.close(End::Card(e.to_string()));
    }

    fn tpdu(&mut self, from: ClientSlot, to: BankSlot, data: Vec<u8>) {
        if let Err(r) = check_tpdu(self.attached_to(), from, to, &data) {
            if r.closes_link() {
                return self.close(End::BadPeer(r.to_string()));
            }
            log::warn!("remsim: {}: {r}: answered 6700", self.who());
            return self.answer(from, to, t0::sw::WRONG_LENGTH.to_vec());
        }
        self.out.push_back(Action::Transmit { from, to, data });
    }

    /// The result of [`Action::Transmit`].
    pub fn answered(
        &mut self,
        from: ClientSlot,
        to: BankSlot,
        data: &[u8],
        r: Result<Vec<u8>, ExchangeError>,
    ) {
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(resp) => self.answer(from, to, resp),
            // Refused before reaching the card: answered with simpool's status, link kept.
            Err(e) if !e.card_touched() => {
                let sw = e.status();
                log::warn!(
                    "remsim: {}: {} refused, answered {}: {e}",
                    self.who(),
                    hex::encode_upper(data),
                    hex::encode_upper(sw)
                );
                self.answer(from, to, sw.to_vec());
            }
            // The card may be in any state: the client reconnects to a freshly started one.
            Err(e) => self.close(End::Card(format!("{}: {e}", hex::encode_upper(data)))),
        }
    }

    fn answer(&mut self, to_client: ClientSlot, from_bank: BankSlot, data: Vec<u8>) {
        self.out.push_back(Action::Send(vec![Msg::TpduCardToModem {
            from_bank,
            to_client,
            flags: TpduFlags::default(),
            data,
        }]));
    }

    fn status(&mut self, from: ClientSlot, to: BankSlot, status: SlotPhysStatus) {
        let Some((client, bank)) = self.attached_to() else {
            log::debug!(
                "remsim: client {}: slot status before a card: ignored",
                self.peer
            );
            self.last_status = status;
            return;
        };
        if from != client || to != bank {
            return self.close(End::BadPeer(format!(
                "clientSlotStatusInd from {from} to {to}, but this is client {client} on bank {bank}"
            )));
        }
        let reset = wants_reset(&self.last_status, &status);
        self.last_status = status;
        if reset {
            self.stats.resets.fetch_add(1, Ordering::Relaxed);
            self.out.push_back(Action::Restart);
        }
    }

    /// The result of [`Action::Restart`]: the card's new ATR, or why not.
    pub fn restarted(&mut self, r: Result<Vec<u8>, String>) {
        let Some(client) = self.client else { return };
        match r {
            Ok(atr) => {
                log::info!(
                    "remsim: {}: card reset (VCC {:?}, RST {}), ATR {}",
                    self.who(),
                    self.last_status.vcc_present,
                    self.last_status.reset_active,
                    hex::encode_upper(&atr)
                );
                self.out
                    .push_back(Action::Send(vec![Msg::SetAtrReq { slot: client, atr }]));
            }
            Err(e) => self.close(End::Card(format!("restart {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remsim::rspro::ComponentIdentity;

    fn cs(c: u16, s: u16) -> ClientSlot {
        ClientSlot {
            client_id: c,
            slot_nr: s,
        }
    }

    fn bs(b: u16, s: u16) -> BankSlot {
        BankSlot {
            bank_id: b,
            slot_nr: s,
        }
    }

    fn session() -> (ClientSession, Instant) {
        let now = Instant::now();
        let s = ClientSession::new(
            ComponentIdentity::bank("simpool"),
            "127.0.0.1:5000".into(),
            Arc::default(),
            now,
        );
        (s, now)
    }

    fn hello(s: &mut ClientSession, now: Instant, slot: ClientSlot) {
        let msg = Msg::ConnectClientReq {
            identity: ComponentIdentity::bank("client"),
            client_slot: Some(slot),
        };
        let bytes = Pdu::new(msg).encode();
        s.frame(Ok(Frame::Rspro(bytes)), now);
    }

    fn drain(s: &mut ClientSession) -> Vec<Action> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    #[test]
    fn a_client_names_its_slot_gets_its_card_and_exchanges() {
        let (mut s, now) = session();
        hello(&mut s, now, cs(23, 0));
        let a = drain(&mut s);
        assert!(matches!(a[..], [Action::Claim(c), Action::Attach(d)] if c == cs(23, 0) && d == c));
        s.attached(bs(1, 17), vec![0x3B, 0x00]);
        match &drain(&mut s)[..] {
            [Action::Send(m)] => {
                assert!(matches!(
                    m[0],
                    Msg::ConnectClientRes {
                        result: ResultCode::Ok,
                        ..
                    }
                ));
                assert!(matches!(&m[1], Msg::SetAtrReq { atr, .. } if atr == &[0x3B, 0x00]));
            }
            other => panic!("{other:?}"),
        }
        let cmd = vec![0xA0, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00];
        let pdu = Pdu::new(Msg::TpduModemToCard {
            from_client: cs(23, 0),
            to_bank: bs(1, 17),
            flags: TpduFlags::default(),
            data: cmd.clone(),
        });
        s.frame(Ok(Frame::Rspro(pdu.encode())), now);
        assert!(matches!(&drain(&mut s)[..], [Action::Transmit { data, .. }] if *data == cmd));
        s.answered(cs(23, 0), bs(1, 17), &cmd, Ok(vec![0x9F, 0x17]));
        assert!(matches!(&drain(&mut s)[..],
            [Action::Send(m)] if matches!(&m[0], Msg::TpduCardToModem { data, .. } if data == &[0x9F, 0x17])));
        // A failed exchange closes the link; the map going away too.
        s.answered(
            cs(23, 0),
            bs(1, 17),
            &cmd,
            Err(ExchangeError::Deadline {
                ms: 1500,
                seen: vec![],
            }),
        );
        assert!(matches!(&drain(&mut s)[..], [Action::Close(End::Card(_))]));
    }

    #[test]
    fn a_client_without_a_card_waits_and_looks_again() {
        let (mut s, now) = session();
        hello(&mut s, now, cs(23, 0));
        drain(&mut s);
        s.not_attached("card 18 is held by reader 0".into(), now);
        match &drain(&mut s)[..] {
            [Action::Send(m)] => assert!(matches!(
                m[0],
                Msg::ConnectClientRes {
                    result: ResultCode::CardNotPresent,
                    ..
                }
            )),
            other => panic!("{other:?}"),
        }
        assert!(s.waiting());
        assert_eq!(s.deadline(), now + RETRY_ATTACH);
        s.leases_changed();
        assert!(matches!(drain(&mut s)[..], [Action::Attach(_)]));
        // Found later: only setAtrReq, as osmo-remsim-bankd does.
        s.attached(bs(1, 17), vec![0x3B]);
        match &drain(&mut s)[..] {
            [Action::Send(m)] => assert!(matches!(m[..], [Msg::SetAtrReq { .. }])),
            other => panic!("{other:?}"),
        }
        s.maps_changed(false);
        assert!(matches!(drain(&mut s)[..], [Action::Close(End::Unmapped)]));
    }

    #[test]
    fn silence_resets_and_the_lease_ending() {
        let (mut s, now) = session();
        s.tick(now + HELLO_TIMEOUT);
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Close(End::BadPeer(_))]
        ));
        let (mut s, now) = session();
        hello(&mut s, now, cs(1, 0));
        drain(&mut s);
        s.attached(bs(1, 0), vec![0x3B]);
        drain(&mut s);
        s.tick(now + KEEPALIVE_IDLE);
        assert!(matches!(drain(&mut s)[..], [Action::Ccm(Ccm::Ping)]));
        let status = |reset: bool| SlotPhysStatus {
            reset_active: reset,
            vcc_present: Some(true),
            clk_active: Some(true),
            card_present: Some(true),
        };
        let ind = |reset| {
            Pdu::new(Msg::ClientSlotStatusInd {
                from_client: cs(1, 0),
                to_bank: bs(1, 0),
                status: status(reset),
            })
            .encode()
        };
        s.frame(Ok(Frame::Rspro(ind(true))), now);
        assert!(matches!(drain(&mut s)[..], [Action::Restart]));
        s.restarted(Ok(vec![0x3B, 0x01]));
        assert!(
            matches!(&drain(&mut s)[..], [Action::Send(m)] if matches!(m[..], [Msg::SetAtrReq { .. }]))
        );
        s.frame(Ok(Frame::Rspro(ind(true))), now);
        assert!(drain(&mut s).is_empty(), "a reset edge, not a level");
        s.lease_ended(Ended::Revoked(
            "stopped by API request from x (forced)".into(),
        ));
        assert!(
            matches!(&drain(&mut s)[..], [Action::Close(End::Card(why))] if why.contains("forced"))
        );
    }
}
