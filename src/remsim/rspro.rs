//! RSPRO (osmo-remsim's asn1/RSPRO.asn, `IMPLICIT TAGS`), sans-IO: BER in, DER out.
//!
//! A small hand-written codec rather than an ASN.1 crate: a bank needs 21 PDUs built from seven
//! primitive types, the wire format must match asn1c's DER byte for byte (checked against the
//! captured vectors of docs/rspro.md), and every length and integer here is bounded and checked
//! in a few readable lines. `rasn` would bring proc-macros and a generic decoder whose limits
//! (nesting, allocation on hostile lengths) we would have to audit anyway, for less code than
//! its generated types. The decoder never recurses on input-driven structure: it descends only
//! into the fixed shapes below and skips unknown elements by their length, so depth is bounded
//! by the schema and input length by the IPA frame ([`super::ipa::MAX_PAYLOAD`]).
//!
//! Tolerated, as the ASN.1 extension markers ask: unknown trailing elements in every SEQUENCE,
//! unknown CHOICE alternatives ([`Msg::Unknown`]), unknown ResultCode values, bytes after the
//! PDU. Refused with an [`RsproError`]: indefinite lengths, truncation, wrong tags, integers out
//! of their ASN.1 range, non-ASCII names.

use std::fmt;

/// The protocol version osmo-remsim 1.0.0 speaks.
pub const VERSION: u32 = 2;

/// Why bytes are not an RSPRO PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsproError {
    #[error("truncated: element needs {need} bytes, {have} left")]
    Truncated { need: usize, have: usize },
    #[error("empty input where an element was expected")]
    Empty,
    #[error("indefinite length (only definite-length BER is accepted)")]
    IndefiniteLength,
    #[error("length field of {0} bytes")]
    LengthTooLong(usize),
    #[error("tag number too large")]
    TagTooLong,
    #[error("{field}: expected tag {expected:02X}, found {found}")]
    UnexpectedTag {
        field: &'static str,
        expected: u8,
        found: Tag,
    },
    #[error("{0} missing")]
    Missing(&'static str),
    #[error("{0}: malformed integer")]
    BadInteger(&'static str),
    #[error("{field}: {value} out of range")]
    OutOfRange { field: &'static str, value: i64 },
    #[error("{0}: malformed boolean")]
    BadBoolean(&'static str),
    #[error("{0}: not an ASCII string")]
    NotAscii(&'static str),
    #[error("{field}: {len} bytes, allowed {min}..={max}")]
    BadSize {
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
}

type Result<T> = std::result::Result<T, RsproError>;

/// A decoded identifier: class (0 universal, 1 application, 2 context, 3 private),
/// constructed bit, number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub class: u8,
    pub constructed: bool,
    pub number: u32,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.number < 31 {
            let b = (self.class << 6) | (u8::from(self.constructed) << 5) | self.number as u8;
            write!(f, "{b:02X}")
        } else {
            write!(
                f,
                "class {} {} {}",
                self.class,
                if self.constructed { "cons" } else { "prim" },
                self.number
            )
        }
    }
}

impl Tag {
    fn is(&self, byte: u8) -> bool {
        byte & 0x1F != 0x1F
            && self.class == byte >> 6
            && self.constructed == (byte & 0x20 != 0)
            && self.number == u32::from(byte & 0x1F)
    }
}

// ---------------------------------------------------------------------------------------------
// The messages

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientSlot {
    pub client_id: u16,
    pub slot_nr: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BankSlot {
    pub bank_id: u16,
    pub slot_nr: u16,
}

impl fmt::Display for ClientSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.client_id, self.slot_nr)
    }
}

impl fmt::Display for BankSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.bank_id, self.slot_nr)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentType {
    Client,
    Server,
    Bankd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentIdentity {
    pub kind: ComponentType,
    pub name: String,
    pub software: String,
    pub sw_version: String,
    pub hw_manufacturer: Option<String>,
    pub hw_model: Option<String>,
    pub hw_serial_nr: Option<String>,
    pub hw_version: Option<String>,
    pub fw_version: Option<String>,
}

impl ComponentIdentity {
    /// simpool's own identity as a bank.
    pub fn bank(name: &str) -> ComponentIdentity {
        ComponentIdentity {
            kind: ComponentType::Bankd,
            name: name.into(),
            software: "simpool".into(),
            sw_version: env!("CARGO_PKG_VERSION").into(),
            hw_manufacturer: None,
            hw_model: None,
            hw_serial_nr: None,
            hw_version: None,
            fw_version: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Ok,
    IllegalClientId,
    IllegalBankId,
    IllegalSlotId,
    UnsupportedProtocolVersion,
    UnknownSlotmap,
    CardNotPresent,
    CardUnresponsive,
    CardTransmissionError,
    /// A value added after 1.0.0 (the enumeration is extensible).
    Other(u32),
}

impl ResultCode {
    fn code(self) -> u32 {
        match self {
            ResultCode::Ok => 0,
            ResultCode::IllegalClientId => 1,
            ResultCode::IllegalBankId => 2,
            ResultCode::IllegalSlotId => 3,
            ResultCode::UnsupportedProtocolVersion => 4,
            ResultCode::UnknownSlotmap => 5,
            ResultCode::CardNotPresent => 100,
            ResultCode::CardUnresponsive => 101,
            ResultCode::CardTransmissionError => 102,
            ResultCode::Other(n) => n,
        }
    }

    fn from_code(n: u32) -> ResultCode {
        match n {
            0 => ResultCode::Ok,
            1 => ResultCode::IllegalClientId,
            2 => ResultCode::IllegalBankId,
            3 => ResultCode::IllegalSlotId,
            4 => ResultCode::UnsupportedProtocolVersion,
            5 => ResultCode::UnknownSlotmap,
            100 => ResultCode::CardNotPresent,
            101 => ResultCode::CardUnresponsive,
            102 => ResultCode::CardTransmissionError,
            n => ResultCode::Other(n),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TpduFlags {
    pub header_present: bool,
    pub final_part: bool,
    pub proc_byte_continue_tx: bool,
    pub proc_byte_continue_rx: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotPhysStatus {
    pub reset_active: bool,
    pub vcc_present: Option<bool>,
    pub clk_active: Option<bool>,
    pub card_present: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPort {
    pub ip: IpAddress,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInd {
    pub sender: ComponentType,
    /// ErrorSeverity (minor 1, major 2, fatal 3, extensible).
    pub severity: u32,
    /// ErrorCode (extensible).
    pub code: u32,
    pub bank_slot: Option<BankSlot>,
    pub client_slot: Option<ClientSlot>,
    pub error_string: Option<String>,
}

/// The alternatives of RsproPDUchoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    ConnectBankReq {
        identity: ComponentIdentity,
        bank_id: u16,
        number_of_slots: u16,
    },
    ConnectBankRes {
        identity: ComponentIdentity,
        result: ResultCode,
    },
    ConnectClientReq {
        identity: ComponentIdentity,
        client_slot: Option<ClientSlot>,
    },
    ConnectClientRes {
        identity: ComponentIdentity,
        result: ResultCode,
    },
    CreateMappingReq {
        client: ClientSlot,
        bank: BankSlot,
    },
    CreateMappingRes {
        result: ResultCode,
    },
    RemoveMappingReq {
        client: ClientSlot,
        bank: BankSlot,
    },
    RemoveMappingRes {
        result: ResultCode,
    },
    ConfigClientIdReq {
        client_slot: ClientSlot,
    },
    ConfigClientIdRes {
        result: ResultCode,
    },
    SetAtrReq {
        slot: ClientSlot,
        atr: Vec<u8>,
    },
    SetAtrRes {
        result: ResultCode,
    },
    TpduModemToCard {
        from_client: ClientSlot,
        to_bank: BankSlot,
        flags: TpduFlags,
        data: Vec<u8>,
    },
    TpduCardToModem {
        from_bank: BankSlot,
        to_client: ClientSlot,
        flags: TpduFlags,
        data: Vec<u8>,
    },
    ClientSlotStatusInd {
        from_client: ClientSlot,
        to_bank: BankSlot,
        status: SlotPhysStatus,
    },
    BankSlotStatusInd {
        from_bank: BankSlot,
        to_client: ClientSlot,
        status: SlotPhysStatus,
    },
    ErrorInd(ErrorInd),
    ConfigClientBankReq {
        bank_slot: BankSlot,
        bankd: IpPort,
    },
    ConfigClientBankRes {
        result: ResultCode,
    },
    ResetStateReq,
    ResetStateRes {
        result: ResultCode,
    },
    /// An alternative added after 1.0.0: kept raw (its context tag number and content).
    Unknown {
        choice: u32,
        constructed: bool,
        body: Vec<u8>,
    },
}

impl Msg {
    /// The alternative's number in RsproPDUchoice.
    pub fn choice(&self) -> u32 {
        match self {
            Msg::ConnectBankReq { .. } => 0,
            Msg::ConnectBankRes { .. } => 1,
            Msg::ConnectClientReq { .. } => 2,
            Msg::ConnectClientRes { .. } => 3,
            Msg::CreateMappingReq { .. } => 4,
            Msg::CreateMappingRes { .. } => 5,
            Msg::RemoveMappingReq { .. } => 6,
            Msg::RemoveMappingRes { .. } => 7,
            Msg::ConfigClientIdReq { .. } => 8,
            Msg::ConfigClientIdRes { .. } => 9,
            Msg::SetAtrReq { .. } => 10,
            Msg::SetAtrRes { .. } => 11,
            Msg::TpduModemToCard { .. } => 12,
            Msg::TpduCardToModem { .. } => 13,
            Msg::ClientSlotStatusInd { .. } => 14,
            Msg::BankSlotStatusInd { .. } => 15,
            Msg::ErrorInd(_) => 16,
            Msg::ConfigClientBankReq { .. } => 17,
            Msg::ConfigClientBankRes { .. } => 18,
            Msg::ResetStateReq => 19,
            Msg::ResetStateRes { .. } => 20,
            Msg::Unknown { choice, .. } => *choice,
        }
    }

    /// The ASN.1 name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::ConnectBankReq { .. } => "connectBankReq",
            Msg::ConnectBankRes { .. } => "connectBankRes",
            Msg::ConnectClientReq { .. } => "connectClientReq",
            Msg::ConnectClientRes { .. } => "connectClientRes",
            Msg::CreateMappingReq { .. } => "createMappingReq",
            Msg::CreateMappingRes { .. } => "createMappingRes",
            Msg::RemoveMappingReq { .. } => "removeMappingReq",
            Msg::RemoveMappingRes { .. } => "removeMappingRes",
            Msg::ConfigClientIdReq { .. } => "configClientIdReq",
            Msg::ConfigClientIdRes { .. } => "configClientIdRes",
            Msg::SetAtrReq { .. } => "setAtrReq",
            Msg::SetAtrRes { .. } => "setAtrRes",
            Msg::TpduModemToCard { .. } => "tpduModemToCard",
            Msg::TpduCardToModem { .. } => "tpduCardToModem",
            Msg::ClientSlotStatusInd { .. } => "clientSlotStatusInd",
            Msg::BankSlotStatusInd { .. } => "bankSlotStatusInd",
            Msg::ErrorInd(_) => "errorInd",
            Msg::ConfigClientBankReq { .. } => "configClientBankReq",
            Msg::ConfigClientBankRes { .. } => "configClientBankRes",
            Msg::ResetStateReq => "resetStateReq",
            Msg::ResetStateRes { .. } => "resetStateRes",
            Msg::Unknown { .. } => "unknown message",
        }
    }
}

/// One RsproPDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub version: u32,
    /// OperationTag: not used for correlation by osmo-remsim (answers match by order).
    pub tag: u32,
    pub msg: Msg,
}

impl Pdu {
    /// A PDU of today's version with operation tag 0, as bankd sends them.
    pub fn new(msg: Msg) -> Pdu {
        Pdu {
            version: VERSION,
            tag: 0,
            msg,
        }
    }

    /// Decodes BER. Bytes after the PDU are ignored (as asn1c's `ber_decode` does).
    pub fn decode(input: &[u8]) -> Result<Pdu> {
        let (outer, _rest) = read_tlv(input)?;
        expect(&outer, 0x30, "RsproPDU")?;
        let mut s = Seq::new(outer.value);
        let version = uint(&s.req(0x80, "version")?, "version", 32)? as u32;
        let tag = uint(&s.req(0x81, "tag")?, "tag", 0x7FFF_FFFF)? as u32;
        let wrapper = s.req(0xA2, "msg")?;
        let (alt, _) = read_tlv(wrapper.value)?;
        s.finish()?;
        let msg = decode_msg(&alt)?;
        Ok(Pdu { version, tag, msg })
    }

    /// Encodes DER (what asn1c's `der_encode` writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        put_uint(&mut body, 0x80, u64::from(self.version));
        put_uint(&mut body, 0x81, u64::from(self.tag));
        let mut alt = Vec::with_capacity(48);
        encode_msg(&self.msg, &mut alt);
        put_tlv(&mut body, 0xA2, &alt);
        let mut out = Vec::with_capacity(body.len() + 4);
        put_tlv(&mut out, 0x30, &body);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// BER reading

struct Tlv<'a> {
    tag: Tag,
    value: &'a [u8],
}

/// Reads one TLV; answers it and what follows.
fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8])> {
    let (&first, mut rest) = input.split_first().ok_or(RsproError::Empty)?;
    let class = first >> 6;
    let constructed = first & 0x20 != 0;
    let mut number = u32::from(first & 0x1F);
    if number == 0x1F {
        number = 0;
        let mut n = 0;
        loop {
            let (&b, r) = rest
                .split_first()
                .ok_or(RsproError::Truncated { need: 1, have: 0 })?;
            rest = r;
            n += 1;
            if n > 4 {
                return Err(RsproError::TagTooLong);
            }
            number = (number << 7) | u32::from(b & 0x7F);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let (&l0, r) = rest
        .split_first()
        .ok_or(RsproError::Truncated { need: 1, have: 0 })?;
    rest = r;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else if l0 == 0x80 {
        return Err(RsproError::IndefiniteLength);
    } else {
        let n = usize::from(l0 & 0x7F);
        if n > 4 {
            return Err(RsproError::LengthTooLong(n));
        }
        if rest.len() < n {
            return Err(RsproError::Truncated {
                need: n,
                have: rest.len(),
            });
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(RsproError::Truncated {
            need: len,
            have: rest.len(),
        });
    }
    let (value, rest) = rest.split_at(len);
    Ok((
        Tlv {
            tag: Tag {
                class,
                constructed,
                number,
            },
            value,
        },
        rest,
    ))
}

fn expect(t: &Tlv, byte: u8, field: &'static str) -> Result<()> {
    if t.tag.is(byte) {
        Ok(())
    } else {
        Err(RsproError::UnexpectedTag {
            field,
            expected: byte,
            found: t.tag,
        })
    }
}

/// The elements of a SEQUENCE, in order.
struct Seq<'a> {
    rest: &'a [u8],
}

impl<'a> Seq<'a> {
    fn new(value: &'a [u8]) -> Seq<'a> {
        Seq { rest: value }
    }

    /// The next element, which must carry tag `byte`.
    fn req(&mut self, byte: u8, field: &'static str) -> Result<Tlv<'a>> {
        if self.rest.is_empty() {
            return Err(RsproError::Missing(field));
        }
        let (t, rest) = read_tlv(self.rest)?;
        expect(&t, byte, field)?;
        self.rest = rest;
        Ok(t)
    }

    /// The next element if it carries tag `byte`.
    fn opt(&mut self, byte: u8) -> Result<Option<Tlv<'a>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (t, rest) = read_tlv(self.rest)?;
        if t.tag.is(byte) {
            self.rest = rest;
            Ok(Some(t))
        } else {
            Ok(None)
        }
    }

    /// Skips extension elements; they must still be well-formed TLVs.
    fn finish(self) -> Result<()> {
        let mut rest = self.rest;
        while !rest.is_empty() {
            rest = read_tlv(rest)?.1;
        }
        Ok(())
    }
}

/// A non-negative INTEGER/ENUMERATED content up to `max`.
fn uint(t: &Tlv, field: &'static str, max: u64) -> Result<u64> {
    let v = t.value;
    if v.is_empty() || v.len() > 8 || t.tag.constructed {
        return Err(RsproError::BadInteger(field));
    }
    let mut x: i64 = if v[0] & 0x80 != 0 { -1 } else { 0 };
    for &b in v {
        x = (x << 8) | i64::from(b);
    }
    if x < 0 || x as u64 > max {
        return Err(RsproError::OutOfRange { field, value: x });
    }
    Ok(x as u64)
}

fn boolean(t: &Tlv, field: &'static str) -> Result<bool> {
    match t.value {
        [b] if !t.tag.constructed => Ok(*b != 0),
        _ => Err(RsproError::BadBoolean(field)),
    }
}

fn octets(t: &Tlv, field: &'static str, min: usize, max: usize) -> Result<Vec<u8>> {
    if t.tag.constructed {
        // Constructed (segmented) strings are legal BER but no RSPRO peer sends them.
        return Err(RsproError::UnexpectedTag {
            field,
            expected: 0x04,
            found: t.tag,
        });
    }
    let len = t.value.len();
    if len < min || len > max {
        return Err(RsproError::BadSize {
            field,
            len,
            min,
            max,
        });
    }
    Ok(t.value.to_vec())
}

fn ia5(t: &Tlv, field: &'static str, max: usize) -> Result<String> {
    let b = octets(t, field, 1, max)?;
    if !b.is_ascii() {
        return Err(RsproError::NotAscii(field));
    }
    Ok(String::from_utf8(b).expect("ASCII is UTF-8"))
}

fn component_type(t: &Tlv) -> Result<ComponentType> {
    match uint(t, "ComponentType", 2)? {
        0 => Ok(ComponentType::Client),
        1 => Ok(ComponentType::Server),
        _ => Ok(ComponentType::Bankd),
    }
}

fn result_code(s: &mut Seq) -> Result<ResultCode> {
    let t = s.req(0x0A, "result")?;
    Ok(ResultCode::from_code(
        uint(&t, "result", u64::from(u32::MAX))? as u32,
    ))
}

fn identity(t: &Tlv) -> Result<ComponentIdentity> {
    expect(t, 0x30, "identity")?;
    let mut s = Seq::new(t.value);
    let kind = component_type(&s.req(0x0A, "identity.type")?)?;
    let name = ia5(&s.req(0x16, "identity.name")?, "identity.name", 32)?;
    let software = ia5(&s.req(0x80, "identity.software")?, "identity.software", 32)?;
    let sw_version = ia5(
        &s.req(0x81, "identity.swVersion")?,
        "identity.swVersion",
        32,
    )?;
    let mut opt = |byte, field| -> Result<Option<String>> {
        s.opt(byte)?.map(|t| ia5(&t, field, 32)).transpose()
    };
    let hw_manufacturer = opt(0x82, "identity.hwManufacturer")?;
    let hw_model = opt(0x83, "identity.hwModel")?;
    let hw_serial_nr = opt(0x84, "identity.hwSerialNr")?;
    let hw_version = opt(0x85, "identity.hwVersion")?;
    let fw_version = opt(0x86, "identity.fwVersion")?;
    s.finish()?;
    Ok(ComponentIdentity {
        kind,
        name,
        software,
        sw_version,
        hw_manufacturer,
        hw_model,
        hw_serial_nr,
        hw_version,
        fw_version,
    })
}

fn client_slot(t: &Tlv, field: &'static str) -> Result<ClientSlot> {
    expect(t, 0x30, field)?;
    let mut s = Seq::new(t.value);
    let client_id = uint(&s.req(0x02, "clientId")?, "clientId", 1023)? as u16;
    let slot_nr = uint(&s.req(0x02, "slotNr")?, "slotNr", 1023)? as u16;
    s.finish()?;
    Ok(ClientSlot { client_id, slot_nr })
}

fn bank_slot(t: &Tlv, field: &'static str) -> Result<BankSlot> {
    expect(t, 0x30, field)?;
    let mut s = Seq::new(t.value);
    let bank_id = uint(&s.req(0x02, "bankId")?, "bankId", 1023)? as u16;
    let slot_nr = uint(&s.req(0x02, "slotNr")?, "slotNr", 1023)? as u16;
    s.finish()?;
    Ok(BankSlot { bank_id, slot_nr })
}

fn tpdu_flags(t: &Tlv) -> Result<TpduFlags> {
    expect(t, 0x30, "flags")?;
    let mut s = Seq::new(t.value);
    let mut b = |f| -> Result<bool> { boolean(&s.req(0x01, f)?, f) };
    let flags = TpduFlags {
        header_present: b("tpduHeaderPresent")?,
        final_part: b("finalPart")?,
        proc_byte_continue_tx: b("procByteContinueTx")?,
        proc_byte_continue_rx: b("procByteContinueRx")?,
    };
    s.finish()?;
    Ok(flags)
}

fn phys_status(t: &Tlv) -> Result<SlotPhysStatus> {
    expect(t, 0x30, "slotPhysStatus")?;
    let mut s = Seq::new(t.value);
    let reset_active = boolean(&s.req(0x80, "resetActive")?, "resetActive")?;
    let mut opt =
        |byte, f| -> Result<Option<bool>> { s.opt(byte)?.map(|t| boolean(&t, f)).transpose() };
    let vcc_present = opt(0x81, "vccPresent")?;
    let clk_active = opt(0x82, "clkActive")?;
    let card_present = opt(0x83, "cardPresent")?;
    s.finish()?;
    Ok(SlotPhysStatus {
        reset_active,
        vcc_present,
        clk_active,
        card_present,
    })
}

fn ip_port(t: &Tlv) -> Result<IpPort> {
    expect(t, 0x30, "bankd")?;
    let mut s = Seq::new(t.value);
    let ip = if let Some(t) = s.opt(0x80)? {
        let b = octets(&t, "ipv4", 4, 4)?;
        IpAddress::V4(b.try_into().expect("4 bytes"))
    } else {
        let t = s.req(0x81, "ip")?;
        let b = octets(&t, "ipv6", 16, 16)?;
        IpAddress::V6(b.try_into().expect("16 bytes"))
    };
    let port = uint(&s.req(0x02, "port")?, "port", 65535)? as u16;
    s.finish()?;
    Ok(IpPort { ip, port })
}

fn decode_msg(alt: &Tlv) -> Result<Msg> {
    let n = alt.tag.number;
    if alt.tag.class != 2 {
        return Err(RsproError::UnexpectedTag {
            field: "msg",
            expected: 0xA0,
            found: alt.tag,
        });
    }
    if !alt.tag.constructed || n > 20 {
        return Ok(Msg::Unknown {
            choice: n,
            constructed: alt.tag.constructed,
            body: alt.value.to_vec(),
        });
    }
    let mut s = Seq::new(alt.value);
    let msg = match n {
        0 => Msg::ConnectBankReq {
            identity: identity(&s.req(0x30, "identity")?)?,
            bank_id: uint(&s.req(0x02, "bankId")?, "bankId", 1023)? as u16,
            number_of_slots: uint(&s.req(0x02, "numberOfSlots")?, "numberOfSlots", 1023)? as u16,
        },
        1 => Msg::ConnectBankRes {
            identity: identity(&s.req(0x30, "identity")?)?,
            result: result_code(&mut s)?,
        },
        2 => Msg::ConnectClientReq {
            identity: identity(&s.req(0x30, "identity")?)?,
            client_slot: s
                .opt(0x30)?
                .map(|t| client_slot(&t, "clientSlot"))
                .transpose()?,
        },
        3 => Msg::ConnectClientRes {
            identity: identity(&s.req(0x30, "identity")?)?,
            result: result_code(&mut s)?,
        },
        4 | 6 => {
            let client = client_slot(&s.req(0x30, "client")?, "client")?;
            let bank = bank_slot(&s.req(0x30, "bank")?, "bank")?;
            if n == 4 {
                Msg::CreateMappingReq { client, bank }
            } else {
                Msg::RemoveMappingReq { client, bank }
            }
        }
        5 => Msg::CreateMappingRes {
            result: result_code(&mut s)?,
        },
        7 => Msg::RemoveMappingRes {
            result: result_code(&mut s)?,
        },
        8 => Msg::ConfigClientIdReq {
            client_slot: client_slot(&s.req(0x30, "clientSlot")?, "clientSlot")?,
        },
        9 => Msg::ConfigClientIdRes {
            result: result_code(&mut s)?,
        },
        10 => Msg::SetAtrReq {
            slot: client_slot(&s.req(0x30, "slot")?, "slot")?,
            atr: octets(&s.req(0x04, "atr")?, "atr", 1, 55)?,
        },
        11 => Msg::SetAtrRes {
            result: result_code(&mut s)?,
        },
        12 => Msg::TpduModemToCard {
            from_client: client_slot(&s.req(0x30, "fromClientSlot")?, "fromClientSlot")?,
            to_bank: bank_slot(&s.req(0x30, "toBankSlot")?, "toBankSlot")?,
            flags: tpdu_flags(&s.req(0x30, "flags")?)?,
            data: octets(&s.req(0x04, "data")?, "data", 0, usize::MAX)?,
        },
        13 => Msg::TpduCardToModem {
            from_bank: bank_slot(&s.req(0x30, "fromBankSlot")?, "fromBankSlot")?,
            to_client: client_slot(&s.req(0x30, "toClientSlot")?, "toClientSlot")?,
            flags: tpdu_flags(&s.req(0x30, "flags")?)?,
            data: octets(&s.req(0x04, "data")?, "data", 0, usize::MAX)?,
        },
        14 => Msg::ClientSlotStatusInd {
            from_client: client_slot(&s.req(0x30, "fromClientSlot")?, "fromClientSlot")?,
            to_bank: bank_slot(&s.req(0x30, "toBankSlot")?, "toBankSlot")?,
            status: phys_status(&s.req(0x30, "slotPhysStatus")?)?,
        },
        15 => Msg::BankSlotStatusInd {
            from_bank: bank_slot(&s.req(0x30, "fromBankSlot")?, "fromBankSlot")?,
            to_client: client_slot(&s.req(0x30, "toClientSlot")?, "toClientSlot")?,
            status: phys_status(&s.req(0x30, "slotPhysStatus")?)?,
        },
        16 => {
            let sender = component_type(&s.req(0x0A, "sender")?)?;
            let severity = uint(&s.req(0x0A, "severity")?, "severity", u64::from(u32::MAX))? as u32;
            let code = uint(&s.req(0x0A, "code")?, "code", u64::from(u32::MAX))? as u32;
            let bank_slot = s
                .opt(0xA0)?
                .map(|t| bank_slot(&retag(&t, 0x30), "bankSlot"))
                .transpose()?;
            let client_slot = s
                .opt(0xA1)?
                .map(|t| client_slot(&retag(&t, 0x30), "clientSlot"))
                .transpose()?;
            let error_string = s
                .opt(0x82)?
                .map(|t| ia5(&t, "errorString", 255))
                .transpose()?;
            Msg::ErrorInd(ErrorInd {
                sender,
                severity,
                code,
                bank_slot,
                client_slot,
                error_string,
            })
        }
        17 => Msg::ConfigClientBankReq {
            bank_slot: bank_slot(&s.req(0x30, "bankSlot")?, "bankSlot")?,
            bankd: ip_port(&s.req(0x30, "bankd")?)?,
        },
        18 => Msg::ConfigClientBankRes {
            result: result_code(&mut s)?,
        },
        19 => Msg::ResetStateReq,
        _ => Msg::ResetStateRes {
            result: result_code(&mut s)?,
        },
    };
    s.finish()?;
    Ok(msg)
}

/// An implicitly tagged SEQUENCE read as a plain one.
fn retag<'a>(t: &Tlv<'a>, byte: u8) -> Tlv<'a> {
    Tlv {
        tag: Tag {
            class: byte >> 6,
            constructed: byte & 0x20 != 0,
            number: u32::from(byte & 0x1F),
        },
        value: t.value,
    }
}

// ---------------------------------------------------------------------------------------------
// DER writing

fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn put_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    put_len(out, value.len());
    out.extend_from_slice(value);
}

/// A non-negative INTEGER/ENUMERATED in its minimal two's complement form.
fn put_uint(out: &mut Vec<u8>, tag: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let mut i = bytes.iter().take_while(|&&b| b == 0).count().min(7);
    if bytes[i] & 0x80 != 0 {
        // A leading 1 bit would read as negative: keep one 00 before it.
        if i == 0 {
            out.push(tag);
            put_len(out, 9);
            out.push(0);
            out.extend_from_slice(&bytes);
            return;
        }
        i -= 1;
    }
    put_tlv(out, tag, &bytes[i..]);
}

fn put_bool(out: &mut Vec<u8>, tag: u8, b: bool) {
    put_tlv(out, tag, &[if b { 0xFF } else { 0x00 }]);
}

fn seq(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::with_capacity(32);
    f(&mut inner);
    put_tlv(out, tag, &inner);
}

fn put_component_type(out: &mut Vec<u8>, k: ComponentType) {
    let v = match k {
        ComponentType::Client => 0,
        ComponentType::Server => 1,
        ComponentType::Bankd => 2,
    };
    put_uint(out, 0x0A, v);
}

fn put_identity(out: &mut Vec<u8>, id: &ComponentIdentity) {
    seq(out, 0x30, |o| {
        put_component_type(o, id.kind);
        put_tlv(o, 0x16, id.name.as_bytes());
        put_tlv(o, 0x80, id.software.as_bytes());
        put_tlv(o, 0x81, id.sw_version.as_bytes());
        for (tag, v) in [
            (0x82, &id.hw_manufacturer),
            (0x83, &id.hw_model),
            (0x84, &id.hw_serial_nr),
            (0x85, &id.hw_version),
            (0x86, &id.fw_version),
        ] {
            if let Some(v) = v {
                put_tlv(o, tag, v.as_bytes());
            }
        }
    });
}

fn put_client_slot(out: &mut Vec<u8>, tag: u8, s: ClientSlot) {
    seq(out, tag, |o| {
        put_uint(o, 0x02, u64::from(s.client_id));
        put_uint(o, 0x02, u64::from(s.slot_nr));
    });
}

fn put_bank_slot(out: &mut Vec<u8>, tag: u8, s: BankSlot) {
    seq(out, tag, |o| {
        put_uint(o, 0x02, u64::from(s.bank_id));
        put_uint(o, 0x02, u64::from(s.slot_nr));
    });
}

fn put_result(out: &mut Vec<u8>, r: ResultCode) {
    put_uint(out, 0x0A, u64::from(r.code()));
}

fn put_flags(out: &mut Vec<u8>, f: TpduFlags) {
    seq(out, 0x30, |o| {
        put_bool(o, 0x01, f.header_present);
        put_bool(o, 0x01, f.final_part);
        put_bool(o, 0x01, f.proc_byte_continue_tx);
        put_bool(o, 0x01, f.proc_byte_continue_rx);
    });
}

fn put_status(out: &mut Vec<u8>, s: SlotPhysStatus) {
    seq(out, 0x30, |o| {
        put_bool(o, 0x80, s.reset_active);
        for (tag, v) in [
            (0x81, s.vcc_present),
            (0x82, s.clk_active),
            (0x83, s.card_present),
        ] {
            if let Some(v) = v {
                put_bool(o, tag, v);
            }
        }
    });
}

fn encode_msg(msg: &Msg, out: &mut Vec<u8>) {
    let tag = 0xA0 | msg.choice() as u8;
    if let Msg::Unknown {
        choice,
        constructed,
        body,
    } = msg
    {
        let mut t = 0x80 | if *constructed { 0x20 } else { 0 };
        if *choice < 31 {
            t |= *choice as u8;
            put_tlv(out, t, body);
        } else {
            // High tag number form, base-128 big-endian.
            out.push(t | 0x1F);
            let mut groups = Vec::new();
            let mut n = *choice;
            loop {
                groups.push((n & 0x7F) as u8);
                n >>= 7;
                if n == 0 {
                    break;
                }
            }
            for (i, g) in groups.iter().enumerate().rev() {
                out.push(if i > 0 { g | 0x80 } else { *g });
            }
            put_len(out, body.len());
            out.extend_from_slice(body);
        }
        return;
    }
    seq(out, tag, |o| match msg {
        Msg::ConnectBankReq {
            identity,
            bank_id,
            number_of_slots,
        } => {
            put_identity(o, identity);
            put_uint(o, 0x02, u64::from(*bank_id));
            put_uint(o, 0x02, u64::from(*number_of_slots));
        }
        Msg::ConnectBankRes { identity, result } | Msg::ConnectClientRes { identity, result } => {
            put_identity(o, identity);
            put_result(o, *result);
        }
        Msg::ConnectClientReq {
            identity,
            client_slot,
        } => {
            put_identity(o, identity);
            if let Some(s) = client_slot {
                put_client_slot(o, 0x30, *s);
            }
        }
        Msg::CreateMappingReq { client, bank } | Msg::RemoveMappingReq { client, bank } => {
            put_client_slot(o, 0x30, *client);
            put_bank_slot(o, 0x30, *bank);
        }
        Msg::CreateMappingRes { result }
        | Msg::RemoveMappingRes { result }
        | Msg::ConfigClientIdRes { result }
        | Msg::SetAtrRes { result }
        | Msg::ConfigClientBankRes { result }
        | Msg::ResetStateRes { result } => put_result(o, *result),
        Msg::ConfigClientIdReq { client_slot } => put_client_slot(o, 0x30, *client_slot),
        Msg::SetAtrReq { slot, atr } => {
            put_client_slot(o, 0x30, *slot);
            put_tlv(o, 0x04, atr);
        }
        Msg::TpduModemToCard {
            from_client,
            to_bank,
            flags,
            data,
        } => {
            put_client_slot(o, 0x30, *from_client);
            put_bank_slot(o, 0x30, *to_bank);
            put_flags(o, *flags);
            put_tlv(o, 0x04, data);
        }
        Msg::TpduCardToModem {
            from_bank,
            to_client,
            flags,
            data,
        } => {
            put_bank_slot(o, 0x30, *from_bank);
            put_client_slot(o, 0x30, *to_client);
            put_flags(o, *flags);
            put_tlv(o, 0x04, data);
        }
        Msg::ClientSlotStatusInd {
            from_client,
            to_bank,
            status,
        } => {
            put_client_slot(o, 0x30, *from_client);
            put_bank_slot(o, 0x30, *to_bank);
            put_status(o, *status);
        }
        Msg::BankSlotStatusInd {
            from_bank,
            to_client,
            status,
        } => {
            put_bank_slot(o, 0x30, *from_bank);
            put_client_slot(o, 0x30, *to_client);
            put_status(o, *status);
        }
        Msg::ErrorInd(e) => {
            put_component_type(o, e.sender);
            put_uint(o, 0x0A, u64::from(e.severity));
            put_uint(o, 0x0A, u64::from(e.code));
            if let Some(s) = e.bank_slot {
                put_bank_slot(o, 0xA0, s);
            }
            if let Some(s) = e.client_slot {
                put_client_slot(o, 0xA1, s);
            }
            if let Some(s) = &e.error_string {
                put_tlv(o, 0x82, s.as_bytes());
            }
        }
        Msg::ConfigClientBankReq { bank_slot, bankd } => {
            put_bank_slot(o, 0x30, *bank_slot);
            seq(o, 0x30, |o| {
                match bankd.ip {
                    IpAddress::V4(a) => put_tlv(o, 0x80, &a),
                    IpAddress::V6(a) => put_tlv(o, 0x81, &a),
                }
                put_uint(o, 0x02, u64::from(bankd.port));
            });
        }
        Msg::ResetStateReq => {}
        Msg::Unknown { .. } => unreachable!("handled above"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_integers() {
        for (v, der) in [
            (0u64, "020100"),
            (127, "02017F"),
            (128, "02020080"),
            (2342, "02020926"),
            (65535, "020300FFFF"),
            (0x7FFF_FFFF, "02047FFFFFFF"),
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, 0x02, v);
            assert_eq!(hex::encode_upper(&out), der, "{v}");
        }
    }

    #[test]
    fn long_lengths() {
        let mut out = Vec::new();
        put_tlv(&mut out, 0x04, &[0u8; 200]);
        assert_eq!(&out[..3], &[0x04, 0x81, 200]);
        out.clear();
        put_tlv(&mut out, 0x04, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2C]);
    }
}
