//! Who a control request comes from, and whether its role allows it: the bearer token (the
//! single `--control-token`, an admin; the named `--control-tokens` file, re-read on SIGHUP)
//! or, on the Unix control socket, the caller's peer credentials ([`crate::users`]).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::http::{header, HeaderMap, Method};

use crate::users::{local_user, Action, Forbidden, Tokens, TokensError, Who};

/// A caller on the Unix control socket, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub uid: u32,
    pub gid: u32,
}

/// The daemon's tokens and local users.
#[derive(Debug)]
pub struct Auth {
    tokens: RwLock<Tokens>,
    single: Option<Tokens>,
    file: Option<PathBuf>,
    /// Local users in this group get `use` on the Unix socket.
    use_group: Option<String>,
}

/// Why a request is refused before any handler runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("missing or wrong bearer token")]
    Token,
    #[error(transparent)]
    Role(#[from] Forbidden),
}

impl Auth {
    /// No tokens at all: TCP callers (loopback only) are `anonymous` admins.
    pub fn open() -> Auth {
        Auth {
            tokens: RwLock::new(Tokens::default()),
            single: None,
            file: None,
            use_group: None,
        }
    }

    /// From the single token (already read) and the tokens file.
    pub fn new(
        single: Option<&str>,
        file: Option<&Path>,
        use_group: Option<String>,
    ) -> Result<Auth, TokensError> {
        // Alone, the single token is everyone's: its callers are as anonymous as those of a
        // daemon without tokens. Beside named users it is the admin named `admin`.
        let name = if file.is_some() {
            "admin"
        } else {
            crate::users::ANONYMOUS
        };
        let single = single.map(|t| Tokens::single_as(t, name));
        let named = match file {
            Some(f) => Tokens::load(f)?,
            None => Tokens::default(),
        };
        let all = single.clone().unwrap_or_default().merged(named);
        Ok(Auth {
            tokens: RwLock::new(all),
            single,
            file: file.map(Path::to_path_buf),
            use_group,
        })
    }

    /// Whether TCP callers need a token.
    pub fn needs_token(&self) -> bool {
        !self.tokens.read().unwrap().is_empty()
    }

    /// Reads the tokens file again (SIGHUP); a bad file keeps the tokens as they were.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let Some(f) = &self.file else {
            return Ok(self.tokens.read().unwrap().len());
        };
        let named = Tokens::load(f)?;
        let all = self.single.clone().unwrap_or_default().merged(named);
        let n = all.len();
        *self.tokens.write().unwrap() = all;
        Ok(n)
    }

    pub fn tokens_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Who sends a request with these headers (on the Unix socket: `local`).
    pub fn who(&self, headers: &HeaderMap, local: Option<&Local>) -> Result<Who, Denied> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
        let tokens = self.tokens.read().unwrap();
        // Without tokens a bearer means nothing (as before users existed).
        let bearer = bearer.filter(|_| !tokens.is_empty());
        match (bearer, local) {
            (Some(t), _) => tokens.who(&t).ok_or(Denied::Token),
            (None, Some(l)) => Ok(local_user(l.uid, Some(l.gid), self.use_group.as_deref())),
            (None, None) if tokens.is_empty() => Ok(Who::anonymous()),
            (None, None) => Err(Denied::Token),
        }
    }

    /// [`Auth::who`], and whether its role allows the request's method: GET/HEAD reads, the
    /// rest uses cards (what only admins may do is checked where it is done).
    pub fn admit(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        local: Option<&Local>,
    ) -> Result<Who, Denied> {
        let who = self.who(headers, local)?;
        if method != Method::GET && method != Method::HEAD {
            who.may(Action::Use, &format!("{method} {path}"))?;
        }
        Ok(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::Role;

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn tokens_roles_and_local_users() {
        let dir = std::env::temp_dir().join(format!("simpool-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(
            &f,
            "alice alice-token-0001 use\nbob bob-token-000002 read\n",
        )
        .unwrap();
        let a = Auth::new(Some("single-token-xyz"), Some(&f), None).unwrap();
        assert!(a.needs_token());
        let none = HeaderMap::new();
        assert_eq!(a.who(&none, None), Err(Denied::Token));
        assert_eq!(a.who(&bearer("nope-nope-nope"), None), Err(Denied::Token));
        assert_eq!(
            a.who(&bearer("single-token-xyz"), None).unwrap().role,
            Role::Admin
        );
        let alice = a.admit(&Method::POST, "/x", &bearer("alice-token-0001"), None);
        assert_eq!(alice.unwrap().user, "alice");
        // bob reads, and is refused a write.
        assert!(a
            .admit(&Method::GET, "/x", &bearer("bob-token-000002"), None)
            .is_ok());
        let e = a
            .admit(
                &Method::PUT,
                "/api/v1/readers/0",
                &bearer("bob-token-000002"),
                None,
            )
            .unwrap_err();
        assert!(matches!(e, Denied::Role(_)), "{e}");
        // Root on the socket: admin, no token needed.
        let root = a.who(&none, Some(&Local { uid: 0, gid: 0 })).unwrap();
        assert_eq!(root.role, Role::Admin);
        // SIGHUP: a new file replaces the named tokens; a broken one keeps them.
        std::fs::write(&f, "carol carol-token-003 admin\n").unwrap();
        assert_eq!(a.reload().unwrap(), 2);
        assert_eq!(a.who(&bearer("alice-token-0001"), None), Err(Denied::Token));
        assert_eq!(
            a.who(&bearer("carol-token-003"), None).unwrap().user,
            "carol"
        );
        std::fs::write(&f, "carol short admin\n").unwrap();
        assert!(a.reload().is_err());
        assert_eq!(
            a.who(&bearer("carol-token-003"), None).unwrap().user,
            "carol"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // No tokens at all: anonymous admins over TCP.
        let open = Auth::open();
        assert_eq!(open.who(&none, None).unwrap(), Who::anonymous());
    }
}
