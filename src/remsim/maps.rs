//! The bank's sans-IO cores: the slot maps the server installs over the control link, what a
//! client's TPDU may do, and the IPA keep-alive timer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rspro::{BankSlot, ClientSlot, Msg, ResultCode, SlotPhysStatus};
use crate::values::CardNo;

/// Bank slot → client slot, as the server ordered.
#[derive(Debug, Clone)]
pub struct SlotMaps {
    bank_id: u16,
    slots: u16,
    maps: BTreeMap<u16, ClientSlot>,
}

/// What a control message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlOutcome {
    /// The answer for the server, if the message needs one.
    pub reply: Option<Msg>,
    /// The maps changed: client sessions must look again.
    pub changed: bool,
}

impl SlotMaps {
    pub fn new(bank_id: u16, slots: u16) -> SlotMaps {
        SlotMaps {
            bank_id,
            slots,
            maps: BTreeMap::new(),
        }
    }

    pub fn bank_id(&self) -> u16 {
        self.bank_id
    }

    fn check(&self, bank: BankSlot) -> ResultCode {
        if bank.bank_id != self.bank_id {
            ResultCode::IllegalBankId
        } else if bank.slot_nr >= self.slots {
            ResultCode::IllegalSlotId
        } else {
            ResultCode::Ok
        }
    }

    /// Applies a message of the server; messages that are not for a bank change nothing.
    pub fn on_control(&mut self, msg: &Msg) -> ControlOutcome {
        let mut changed = false;
        let reply = match msg {
            Msg::CreateMappingReq { client, bank } => {
                let mut result = self.check(*bank);
                if result == ResultCode::Ok {
                    // One client slot uses one card: a map moving it drops its old one.
                    let before = self.maps.clone();
                    self.maps.retain(|_, c| c != client);
                    self.maps.insert(bank.slot_nr, *client);
                    changed = self.maps != before;
                    result = ResultCode::Ok;
                }
                Some(Msg::CreateMappingRes { result })
            }
            Msg::RemoveMappingReq { client, bank } => {
                let mut result = self.check(*bank);
                if result == ResultCode::Ok {
                    if self.maps.get(&bank.slot_nr) == Some(client) {
                        self.maps.remove(&bank.slot_nr);
                        changed = true;
                    } else {
                        result = ResultCode::UnknownSlotmap;
                    }
                }
                Some(Msg::RemoveMappingRes { result })
            }
            Msg::ResetStateReq => {
                changed = !self.maps.is_empty();
                self.maps.clear();
                Some(Msg::ResetStateRes {
                    result: ResultCode::Ok,
                })
            }
            _ => None,
        };
        ControlOutcome { reply, changed }
    }

    /// The bank slot mapped to `client`.
    pub fn bank_slot_of(&self, client: ClientSlot) -> Option<BankSlot> {
        self.maps
            .iter()
            .find(|(_, c)| **c == client)
            .map(|(s, _)| BankSlot {
                bank_id: self.bank_id,
                slot_nr: *s,
            })
    }

    pub fn is_mapped(&self, bank: BankSlot, client: ClientSlot) -> bool {
        bank.bank_id == self.bank_id && self.maps.get(&bank.slot_nr) == Some(&client)
    }

    pub fn list(&self) -> Vec<(BankSlot, ClientSlot)> {
        self.maps
            .iter()
            .map(|(s, c)| {
                (
                    BankSlot {
                        bank_id: self.bank_id,
                        slot_nr: *s,
                    },
                    *c,
                )
            })
            .collect()
    }
}

/// Bank slot k is the pool's card k+1 (front-panel numbering); `None` beyond the pool's 256.
pub fn card_of(slot: BankSlot) -> Option<CardNo> {
    slot.slot_nr
        .checked_add(1)
        .and_then(|n| CardNo::new(n).ok())
}

/// T=0 over RSPRO: a header and at most 255 data bytes (case 3/4) or a header (case 1/2).
pub const MIN_TPDU: usize = 5;
pub const MAX_TPDU: usize = 260;

/// Why a client's TPDU is not sent to the card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpduRefusal {
    #[error("TPDU before the client slot has a card")]
    NoCard,
    #[error("TPDU from client {from} to bank slot {to}, but this connection is client {client} on bank slot {bank}")]
    WrongSlot {
        from: ClientSlot,
        to: BankSlot,
        client: ClientSlot,
        bank: BankSlot,
    },
    #[error("TPDU of {0} bytes (T=0 takes {MIN_TPDU}..={MAX_TPDU})")]
    BadLength(usize),
}

impl TpduRefusal {
    /// A misaddressed TPDU means a confused or hostile peer: the link is closed. A bad length is
    /// answered with `67 00` and the link kept (the card never saw it).
    pub fn closes_link(&self) -> bool {
        !matches!(self, TpduRefusal::BadLength(_))
    }
}

/// Checks a tpduModemToCard against the session it arrived on (`active`: this connection's
/// client slot and the bank slot whose card it holds).
pub fn check_tpdu(
    active: Option<(ClientSlot, BankSlot)>,
    from: ClientSlot,
    to: BankSlot,
    data: &[u8],
) -> Result<(), TpduRefusal> {
    let (client, bank) = active.ok_or(TpduRefusal::NoCard)?;
    if from != client || to != bank {
        return Err(TpduRefusal::WrongSlot {
            from,
            to,
            client,
            bank,
        });
    }
    if !(MIN_TPDU..=MAX_TPDU).contains(&data.len()) {
        return Err(TpduRefusal::BadLength(data.len()));
    }
    Ok(())
}

/// Whether a clientSlotStatusInd asks for a card reset: VCC off (every time: client-shell's
/// RESET sends exactly that), or the reset line going active.
pub fn wants_reset(last: &SlotPhysStatus, now: &SlotPhysStatus) -> bool {
    now.vcc_present == Some(false) || (now.reset_active && !last.reset_active)
}

/// IPA keep-alive as osmo-remsim runs it: PING after `idle` without traffic, give up when
/// nothing arrives for `grace` after the PING.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    idle: Duration,
    grace: Duration,
    last_rx: Instant,
    ping_sent: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveAction {
    Nothing,
    SendPing,
    Dead,
}

impl KeepAlive {
    pub fn new(idle: Duration, grace: Duration, now: Instant) -> KeepAlive {
        KeepAlive {
            idle,
            grace,
            last_rx: now,
            ping_sent: None,
        }
    }

    /// Anything arrived: the peer lives.
    pub fn received(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// When [`KeepAlive::poll`] has something to do next.
    pub fn next_deadline(&self) -> Instant {
        match self.ping_sent {
            Some(t) => t + self.grace,
            None => self.last_rx + self.idle,
        }
    }

    pub fn poll(&mut self, now: Instant) -> KeepAliveAction {
        match self.ping_sent {
            Some(t) if now >= t + self.grace => KeepAliveAction::Dead,
            Some(_) => KeepAliveAction::Nothing,
            None if now >= self.last_rx + self.idle => {
                self.ping_sent = Some(now);
                KeepAliveAction::SendPing
            }
            None => KeepAliveAction::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn create_remove_reset() {
        let mut m = SlotMaps::new(1, 256);
        let r = m.on_control(&Msg::CreateMappingReq {
            client: cs(23, 0),
            bank: bs(1, 17),
        });
        assert_eq!(
            r,
            ControlOutcome {
                reply: Some(Msg::CreateMappingRes {
                    result: ResultCode::Ok
                }),
                changed: true
            }
        );
        assert_eq!(m.bank_slot_of(cs(23, 0)), Some(bs(1, 17)));
        assert_eq!(card_of(bs(1, 17)).unwrap(), 18);
        assert_eq!(card_of(bs(1, 256)), None);
        // The same map again changes nothing.
        assert!(
            !m.on_control(&Msg::CreateMappingReq {
                client: cs(23, 0),
                bank: bs(1, 17),
            })
            .changed
        );
        // The client slot moves to another card: the old map goes.
        m.on_control(&Msg::CreateMappingReq {
            client: cs(23, 0),
            bank: bs(1, 255),
        });
        assert_eq!(m.list(), vec![(bs(1, 255), cs(23, 0))]);
        // Another client takes bank slot 255: implicit removal of 23:0.
        m.on_control(&Msg::CreateMappingReq {
            client: cs(24, 1),
            bank: bs(1, 255),
        });
        assert_eq!(m.bank_slot_of(cs(23, 0)), None);
        assert!(m.is_mapped(bs(1, 255), cs(24, 1)));
        // Removal must name the right client.
        let wrong = m.on_control(&Msg::RemoveMappingReq {
            client: cs(23, 0),
            bank: bs(1, 255),
        });
        assert_eq!(
            wrong.reply,
            Some(Msg::RemoveMappingRes {
                result: ResultCode::UnknownSlotmap
            })
        );
        assert!(!wrong.changed);
        let ok = m.on_control(&Msg::RemoveMappingReq {
            client: cs(24, 1),
            bank: bs(1, 255),
        });
        assert!(ok.changed);
        assert!(m.list().is_empty());
        m.on_control(&Msg::CreateMappingReq {
            client: cs(1, 1),
            bank: bs(1, 0),
        });
        let reset = m.on_control(&Msg::ResetStateReq);
        assert_eq!(
            reset,
            ControlOutcome {
                reply: Some(Msg::ResetStateRes {
                    result: ResultCode::Ok
                }),
                changed: true
            }
        );
        assert!(m.list().is_empty());
    }

    #[test]
    fn illegal_bank_and_slot() {
        let mut m = SlotMaps::new(1, 256);
        for (bank, want) in [
            (bs(2, 0), ResultCode::IllegalBankId),
            (bs(1, 256), ResultCode::IllegalSlotId),
        ] {
            for msg in [
                Msg::CreateMappingReq {
                    client: cs(1, 0),
                    bank,
                },
                Msg::RemoveMappingReq {
                    client: cs(1, 0),
                    bank,
                },
            ] {
                let r = m.on_control(&msg);
                assert!(!r.changed);
                let got = match r.reply.unwrap() {
                    Msg::CreateMappingRes { result } | Msg::RemoveMappingRes { result } => result,
                    m => panic!("{m:?}"),
                };
                assert_eq!(got, want);
            }
        }
        assert_eq!(
            m.on_control(&Msg::SetAtrRes {
                result: ResultCode::Ok
            }),
            ControlOutcome {
                reply: None,
                changed: false
            }
        );
    }

    #[test]
    fn tpdu_checks() {
        let active = Some((cs(23, 0), bs(1, 17)));
        let cmd = [0xA0, 0xA4, 0, 0, 2, 0x3F, 0];
        assert_eq!(check_tpdu(active, cs(23, 0), bs(1, 17), &cmd), Ok(()));
        assert_eq!(
            check_tpdu(None, cs(23, 0), bs(1, 17), &cmd),
            Err(TpduRefusal::NoCard)
        );
        let wrong = check_tpdu(active, cs(23, 0), bs(1, 18), &cmd).unwrap_err();
        assert!(wrong.closes_link());
        assert!(check_tpdu(active, cs(24, 0), bs(1, 17), &cmd).is_err());
        for n in [0, 4, 261, 300] {
            let e = check_tpdu(active, cs(23, 0), bs(1, 17), &vec![0xA0; n]).unwrap_err();
            assert_eq!(e, TpduRefusal::BadLength(n));
            assert!(!e.closes_link());
        }
        assert!(check_tpdu(active, cs(23, 0), bs(1, 17), &[0xA0; 260]).is_ok());
    }

    #[test]
    fn resets_on_vcc_off_and_reset_edge() {
        let idle = SlotPhysStatus {
            reset_active: false,
            vcc_present: Some(true),
            clk_active: Some(true),
            card_present: Some(true),
        };
        let shell_reset = SlotPhysStatus {
            reset_active: true,
            vcc_present: Some(false),
            clk_active: Some(false),
            card_present: Some(true),
        };
        assert!(wants_reset(&idle, &shell_reset));
        // client-shell's RESET twice in a row: both restart.
        assert!(wants_reset(&shell_reset, &shell_reset));
        let rst = SlotPhysStatus {
            reset_active: true,
            ..idle
        };
        assert!(wants_reset(&idle, &rst));
        assert!(!wants_reset(&rst, &rst), "reset held: one restart");
        assert!(!wants_reset(&rst, &idle), "reset released");
        assert!(!wants_reset(&idle, &idle));
    }

    #[test]
    fn keepalive_pings_then_gives_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = KeepAlive::new(30 * s, 10 * s, t0);
        assert_eq!(k.next_deadline(), t0 + 30 * s);
        assert_eq!(k.poll(t0 + 29 * s), KeepAliveAction::Nothing);
        assert_eq!(k.poll(t0 + 30 * s), KeepAliveAction::SendPing);
        assert_eq!(k.next_deadline(), t0 + 40 * s);
        assert_eq!(k.poll(t0 + 35 * s), KeepAliveAction::Nothing);
        k.received(t0 + 36 * s);
        assert_eq!(k.poll(t0 + 40 * s), KeepAliveAction::Nothing);
        assert_eq!(k.poll(t0 + 66 * s), KeepAliveAction::SendPing);
        assert_eq!(k.poll(t0 + 76 * s), KeepAliveAction::Dead);
    }
}
