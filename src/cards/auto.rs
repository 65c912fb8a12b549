//! `apdu --auto` (`"auto": true`): what a T=0 reader's application does with the status words
//! that are procedure, not answer (ISO/IEC 7816-3 §10.3.3, GSM 11.11 §9.4, TS 102 221 §7.3):
//! `61xx` / `9Fxx` — the answer waits, fetch it with GET RESPONSE (Le = xx); `6Cxx` — wrong
//! Le, send the same command again with P3 = xx. The terminal itself (src/t0.rs) passes status
//! words through untouched, as the pool's clients expect; this is the application side, sans-IO:
//! it is told each response and answers the next command to send, or the final answer (the
//! data of every GET RESPONSE joined, and the last status word).

/// A run of follow-ups for one command is cut after this many exchanges (a card that answers
/// `61xx` forever must not hold the run).
pub const MAX_EXCHANGES: usize = 32;

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send this command next.
    Send(Vec<u8>),
    /// The answer to the command, as an application sees it.
    Done(Vec<u8>),
}

/// The follow-ups of one command.
#[derive(Debug, Clone)]
pub struct Auto {
    /// The command last sent.
    last: Vec<u8>,
    /// The data of the answers so far (GET RESPONSE chains).
    data: Vec<u8>,
    exchanges: usize,
}

impl Auto {
    /// For a command about to be sent.
    pub fn new(command: &[u8]) -> Auto {
        Auto {
            last: command.to_vec(),
            data: Vec::new(),
            exchanges: 0,
        }
    }

    /// The response to the command last sent: what comes next.
    pub fn next(&mut self, response: &[u8]) -> Next {
        self.exchanges += 1;
        let n = response.len();
        if n < 2 || self.last.len() < 5 || self.exchanges >= MAX_EXCHANGES {
            return self.done(response);
        }
        let (sw1, sw2) = (response[n - 2], response[n - 1]);
        match sw1 {
            0x61 | 0x9F => {
                self.data.extend_from_slice(&response[..n - 2]);
                let cla = get_response_class(self.last[0]);
                self.last = vec![cla, 0xC0, 0x00, 0x00, sw2];
                Next::Send(self.last.clone())
            }
            // Only for a command that expects data (case 2): P3 is its Le.
            0x6C => {
                self.data.extend_from_slice(&response[..n - 2]);
                self.last.truncate(5);
                self.last[4] = sw2;
                Next::Send(self.last.clone())
            }
            _ => self.done(response),
        }
    }

    fn done(&mut self, response: &[u8]) -> Next {
        let mut answer = std::mem::take(&mut self.data);
        answer.extend_from_slice(response);
        Next::Done(answer)
    }
}

/// GET RESPONSE's class for a command of class `cla`: `A0` for GSM 11.11; else the
/// inter-industry class on the same logical channel (basic channels 0-3 in bits 1-2, the
/// extended ones 4-19 as `4X`), without secure messaging or chaining.
fn get_response_class(cla: u8) -> u8 {
    match cla {
        0xA0 => 0xA0,
        c if c & 0x40 != 0 => 0x40 | (c & 0x0F),
        c => c & 0x03,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn get_response_on_9fxx_and_61xx_in_the_command_s_class_and_channel() {
        let mut a = Auto::new(&h("A0A40000027F20"));
        assert_eq!(a.next(&h("9F17")), Next::Send(h("A0C0000017")));
        assert_eq!(a.next(&h("0102039000")), Next::Done(h("0102039000")));
        let mut a = Auto::new(&h("01A4040410A0000000871002FFFFFFFF8907090000"));
        assert_eq!(a.next(&h("6134")), Next::Send(h("01C0000034")));
        let mut a = Auto::new(&h("C1A40004026F07"));
        assert_eq!(a.next(&h("611E")), Next::Send(h("41C000001E")));
        let mut a = Auto::new(&h("81E2910003BF3E00"));
        assert_eq!(a.next(&h("6100")), Next::Send(h("01C0000000")));
    }

    #[test]
    fn a_chain_of_61xx_joins_the_data_and_ends_with_the_last_status_word() {
        let mut a = Auto::new(&h("00CB000000"));
        assert_eq!(a.next(&h("6102")), Next::Send(h("00C0000002")));
        assert_eq!(a.next(&h("AABB6101")), Next::Send(h("00C0000001")));
        assert_eq!(a.next(&h("CC9000")), Next::Done(h("AABBCC9000")));
    }

    #[test]
    fn wrong_le_is_sent_again_with_the_card_s_le() {
        let mut a = Auto::new(&h("A0B0000020"));
        assert_eq!(a.next(&h("6C09")), Next::Send(h("A0B0000009")));
        assert_eq!(
            a.next(&h("0809101000000000189000")),
            Next::Done(h("0809101000000000189000"))
        );
        // A GET RESPONSE with the wrong Le is itself sent again.
        let mut a = Auto::new(&h("00A40004026F07"));
        assert_eq!(a.next(&h("6120")), Next::Send(h("00C0000020")));
        assert_eq!(a.next(&h("6C1E")), Next::Send(h("00C000001E")));
    }

    #[test]
    fn other_status_words_are_the_answer_and_endless_chains_end() {
        for sw in ["9000", "6A82", "6982", "9850"] {
            let mut a = Auto::new(&h("A0A40000023F00"));
            assert_eq!(a.next(&h(sw)), Next::Done(h(sw)));
        }
        let mut a = Auto::new(&h("A0A40000023F00"));
        let mut sent = 0;
        while let Next::Send(_) = a.next(&h("9F10")) {
            sent += 1;
        }
        assert_eq!(sent, MAX_EXCHANGES - 1);
    }
}
