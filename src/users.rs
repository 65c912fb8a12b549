//! Who calls the daemon: named users and their roles.
//!
//! A caller is a [`Who`]: a user name and a [`Role`]. Over TCP the bearer token says who it
//! is (`--control-tokens FILE`: lines `NAME TOKEN ROLE`; the single `--control-token` is an
//! admin token named `admin`); over the Unix control socket the kernel does (SO_PEERCRED):
//! root is admin, members of the configured group get `use`, other local users `read`.
//! Without any token configured, TCP callers (loopback only) are `anonymous` admins, as before
//! users existed.
//!
//! What a role may do is decided here once ([`Role::allows`]); what a reserved card allows is
//! the card layer's ([`crate::reservations`]).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET only.
    Read,
    /// Reserve, exec, bind/unbind, apdu, stop its own cards.
    Use,
    /// Everything, including others' reservations and `stop --force`.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "use" => Ok(Role::Use),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role {s:?}: want read, use or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Use => "use",
            Role::Admin => "admin",
        })
    }
}

/// What a request asks to do, as far as roles go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look (GET).
    Read,
    /// Use cards: reserve, bind, apdu, stop, scan.
    Use,
    /// Take from others: a forced stop, another user's reservation.
    Admin,
}

impl Role {
    pub fn allows(self, a: Action) -> bool {
        match a {
            Action::Read => true,
            Action::Use => self >= Role::Use,
            Action::Admin => self == Role::Admin,
        }
    }
}

/// The user of TCP callers of a daemon without tokens.
pub const ANONYMOUS: &str = "anonymous";

/// A caller: a user name and its role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Who {
    pub user: String,
    pub role: Role,
}

impl Who {
    pub fn new(user: impl Into<String>, role: Role) -> Who {
        Who {
            user: user.into(),
            role,
        }
    }

    /// A TCP caller of a daemon without tokens (loopback only): everything, as before users.
    pub fn anonymous() -> Who {
        Who::new(ANONYMOUS, Role::Admin)
    }

    /// The daemon itself (start-up bindings, the expiry of reservations).
    pub fn daemon() -> Who {
        Who::new("simpool", Role::Admin)
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuses what the role does not allow, naming the user and the role.
    pub fn may(&self, a: Action, what: &str) -> Result<(), Forbidden> {
        if self.role.allows(a) {
            Ok(())
        } else {
            Err(Forbidden {
                user: self.user.clone(),
                role: self.role,
                what: what.to_string(),
            })
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}

/// A request the caller's role does not allow (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user {user} (role {role}) may not {what}")]
pub struct Forbidden {
    pub user: String,
    pub role: Role,
    pub what: String,
}

/// A tokens file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokensError {
    #[error("control tokens file {file}: {why}")]
    File { file: String, why: String },
    #[error("control tokens file {file} line {line}: {why}")]
    Line {
        file: String,
        line: usize,
        why: String,
    },
}

/// The named tokens (`NAME TOKEN ROLE` lines; `#` starts a comment).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Who, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    /// Never the tokens themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(w, _)| (&w.user, w.role)))
            .finish()
    }
}

/// Shortest token taken: a short one can be guessed.
pub const MIN_TOKEN: usize = 12;

impl Tokens {
    /// Parses a tokens file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Tokens, TokensError> {
        let mut t = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let bad = |why: String| TokensError::Line {
                file: file.to_string(),
                line: i + 1,
                why,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, token, role] = words[..] else {
                return Err(bad(format!(
                    "want NAME TOKEN ROLE, found {} words",
                    words.len()
                )));
            };
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
                || name.len() > 64
            {
                return Err(bad(format!(
                    "user name {name:?}: use letters, digits, '_', '-', '.', '@'"
                )));
            }
            if token.len() < MIN_TOKEN {
                return Err(bad(format!(
                    "the token of {name} is shorter than {MIN_TOKEN} characters"
                )));
            }
            let role: Role = role.parse().map_err(bad)?;
            if t.entries.iter().any(|(w, _)| w.user == name) {
                return Err(bad(format!("user {name} appears twice")));
            }
            if t.entries.iter().any(|(_, k)| k == token.as_bytes()) {
                return Err(bad(format!("the token of {name} is another user's too")));
            }
            t.entries
                .push((Who::new(name, role), token.as_bytes().to_vec()));
        }
        Ok(t)
    }

    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokensError::File {
            file: file.clone(),
            why: e.to_string(),
        })?;
        let t = Tokens::parse(&text, &file)?;
        if t.entries.is_empty() {
            return Err(TokensError::File {
                file,
                why: "no NAME TOKEN ROLE line".into(),
            });
        }
        Ok(t)
    }

    /// The single `--control-token`: an admin named `admin`.
    pub fn single(token: &str) -> Tokens {
        Tokens::single_as(token, "admin")
    }

    /// The single token as the admin `name` (`anonymous` on a daemon with no other user:
    /// one token for everyone names nobody).
    pub fn single_as(token: &str, name: &str) -> Tokens {
        Tokens {
            entries: vec![(Who::new(name, Role::Admin), token.as_bytes().to_vec())],
        }
    }

    /// Both sets (the single token first).
    pub fn merged(mut self, other: Tokens) -> Tokens {
        self.entries.extend(other.entries);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whose token this is. Every entry is compared, each in constant time, so neither the
    /// position of a match nor the first wrong byte shows in the time taken.
    pub fn who(&self, given: &str) -> Option<Who> {
        let given = given.as_bytes();
        let mut found = None;
        for (who, token) in &self.entries {
            if constant_time_eq(given, token) && found.is_none() {
                found = Some(who.clone());
            }
        }
        found
    }
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// A local caller on the Unix control socket, from its peer credentials.
pub fn local_user(uid: u32, gid: Option<u32>, use_group: Option<&str>) -> Who {
    use nix::unistd::{Gid, Group, Uid, User};
    if uid == 0 {
        return Who::new("root", Role::Admin);
    }
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let name = user
        .as_ref()
        .map_or_else(|| format!("uid{uid}"), |u| u.name.clone());
    let member = use_group.is_some_and(|g| {
        let Ok(Some(group)) = Group::from_name(g) else {
            return false;
        };
        gid == Some(group.gid.as_raw())
            || user.as_ref().is_some_and(|u| u.gid == group.gid)
            || group.mem.contains(&name)
            || user.as_ref().is_some_and(|u| {
                nix::unistd::getgrouplist(
                    &std::ffi::CString::new(u.name.as_str()).unwrap_or_default(),
                    u.gid,
                )
                .is_ok_and(|gs| gs.contains(&Gid::from_raw(group.gid.as_raw())))
            })
    });
    Who::new(name, if member { Role::Use } else { Role::Read })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines_roles_and_lookup() {
        let t = Tokens::parse(
            "# lab users\nalice alice-token-0001 use\n\nbob   bob-token-00002 read  # CI\n\
             carol carol-token-003 admin\n",
            "f",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.who("alice-token-0001"),
            Some(Who::new("alice", Role::Use))
        );
        assert_eq!(t.who("bob-token-00002").unwrap().role, Role::Read);
        assert_eq!(t.who("carol-token-003").unwrap().role, Role::Admin);
        assert_eq!(t.who("alice-token-0002"), None);
        assert_eq!(t.who(""), None);
        assert_eq!(t.who("alice-token-00011"), None);
        // The token never shows in Debug output.
        assert!(!format!("{t:?}").contains("token-0001"));
        for (bad, why) in [
            ("alice tok use", "shorter"),
            ("alice alice-token-0001", "NAME TOKEN ROLE"),
            ("alice alice-token-0001 root", "role"),
            ("al/ice alice-token-0001 use", "user name"),
            ("a aaaaaaaaaaaaa use\na bbbbbbbbbbbbbb use", "twice"),
            ("a aaaaaaaaaaaaa use\nb aaaaaaaaaaaaa use", "another user"),
        ] {
            let e = Tokens::parse(bad, "f").unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = Tokens::parse("x\nalice tok use", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let single = Tokens::single("the-one-token").merged(t);
        assert_eq!(
            single.who("the-one-token"),
            Some(Who::new("admin", Role::Admin))
        );
        assert_eq!(single.who("alice-token-0001").unwrap().user, "alice");
    }

    #[test]
    fn roles_allow_in_order() {
        assert!(Role::Read.allows(Action::Read));
        assert!(!Role::Read.allows(Action::Use));
        assert!(Role::Use.allows(Action::Use));
        assert!(!Role::Use.allows(Action::Admin));
        assert!(Role::Admin.allows(Action::Admin));
        let e = Who::new("bob", Role::Read)
            .may(Action::Use, "reserve cards")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "user bob (role read) may not reserve cards");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn root_is_admin_others_by_group() {
        assert_eq!(local_user(0, Some(0), None), Who::new("root", Role::Admin));
        // nobody is in no group named like this.
        let w = local_user(65534, Some(65534), Some("no-such-group-xyz"));
        assert_eq!(w.role, Role::Read);
        // Its primary group makes it a member.
        let g = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
            .ok()
            .flatten();
        if let Some(g) = g {
            assert_eq!(
                local_user(65534, Some(65534), Some(&g.name)).role,
                Role::Use
            );
        }
    }
}
