//! `simpool status`: the 256 slot states (and, through the daemon, who holds which card).

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;

use simpool::pool::SlotState;
use simpool::rows::{CardRow, StatusRow};
use simpool::values::CardNo;

use super::{out, out_json, CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let rows: Vec<StatusRow> = match pool.via().await? {
        Via::Daemon(c) => {
            let cards: Vec<CardRow> = c
                .call(
                    Method::GET,
                    "/api/v1/cards",
                    None::<&()>,
                    Duration::from_secs(5),
                )
                .await?;
            cards
                .into_iter()
                .map(|c| match c.state {
                    Some(state) => Ok(StatusRow {
                        card: c.card,
                        state,
                        holder: c.holder,
                        labels: c.labels,
                        facts: c.facts,
                        refused: c.refused,
                    }),
                    None => Err(CliError::Card(
                        "the daemon cannot read the slot states: its pool link is down".into(),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Via::Pool(p) => p
            .link()
            .states()
            .await?
            .into_iter()
            .zip(CardNo::all())
            .map(|(state, card)| StatusRow {
                card,
                state,
                holder: None,
                labels: Default::default(),
                facts: Default::default(),
                refused: None,
            })
            .collect(),
    };
    if json_out {
        // One shape for every list the commands print: an array of rows with fixed keys.
        out_json(&rows)?;
    } else {
        let states: Vec<SlotState> = rows.iter().map(|r| r.state).collect();
        out(grid(&states).trim_end())?;
        let held: Vec<String> = rows
            .iter()
            .filter_map(|r| r.holder.as_ref().map(|h| format!("{} {h}", r.card)))
            .collect();
        if !held.is_empty() {
            out(format!("held: {}", held.join(", ")))?;
        }
        let labelled: Vec<String> = rows
            .iter()
            .filter(|r| !r.labels.is_empty())
            .map(|r| format!("{} {}", r.card, super::label::text(&r.labels)))
            .collect();
        if !labelled.is_empty() {
            out(format!("labels: {}", labelled.join("; ")))?;
        }
        // What the daemon has read of its cards (by scans and bindings).
        for r in rows.iter().filter(|r| r.facts.kind.is_some()) {
            for (i, l) in super::scan::facts_lines(&r.facts).iter().enumerate() {
                if i == 0 {
                    out(format!("{:>4}  {l}", r.card))?;
                } else {
                    out(format!("      {l}"))?;
                }
            }
        }
        for r in &rows {
            if let Some(why) = &r.refused {
                out(format!("card {}: {why}", r.card))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A 16×16 grid like the front panel: one character per slot.
pub fn grid(states: &[SlotState]) -> String {
    // Columns 4 wide, so that "+9 +10 +11" stay apart: a card is its row's number plus its column's.
    let mut s = String::from("card");
    for col in 0..16 {
        s.push_str(&format!("{:>4}", format!("+{col}")));
    }
    s.push('\n');
    for (row, chunk) in states.chunks(16).enumerate() {
        s.push_str(&format!("{:>4}", row * 16 + 1));
        for st in chunk {
            s.push_str(&format!("{:>4}", symbol(*st)));
        }
        s.push('\n');
    }
    let count = |f: fn(&SlotState) -> bool| states.iter().filter(|s| f(s)).count();
    s.push_str(&format!(
        "legend: . empty  o inserted  * working  ! abnormal  ? unknown\n\
         cards: {} inserted ({} working, {} idle, {} abnormal), {} empty slots\n",
        count(|s| s.has_card()),
        count(|s| *s == SlotState::Working),
        count(|s| *s == SlotState::Inserted),
        count(|s| *s == SlotState::Abnormal),
        count(|s| !s.has_card()),
    ));
    s
}

fn symbol(s: SlotState) -> char {
    match s {
        SlotState::Empty => '.',
        SlotState::Inserted => 'o',
        SlotState::Working => '*',
        SlotState::Abnormal => '!',
        SlotState::Unknown(_) => '?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_s_column_headers_stand_apart_over_their_columns() {
        let mut states = vec![SlotState::Empty; 256];
        states[9] = SlotState::Inserted; // card 10: row 1, column +9
        states[26] = SlotState::Working; // card 27: row 17, column +10
        let g = grid(&states);
        let lines: Vec<&str> = g.lines().collect();
        let head = lines[0];
        // Every header is a word of its own.
        let words: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(words.len(), 17, "{head}");
        assert_eq!(words[10], "+9");
        assert_eq!(words[11], "+10");
        // Each symbol sits under the last character of its column's header.
        let under = |line: &str, h: &str| {
            let end = head.find(&format!(" {h}")).unwrap() + h.len();
            line.as_bytes()[end] as char
        };
        assert_eq!(under(lines[1], "+9"), 'o', "{g}");
        assert_eq!(under(lines[2], "+10"), '*', "{g}");
    }
}
