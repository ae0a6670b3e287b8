//! A catalogue's address: a `postgres://` / `postgresql://` URL, with arvis's own parameters
//! (`catalogue`, `ef_search`) taken out, libpq's conventions for what it leaves unsaid
//! (`PGUSER`, `PGPASSWORD`, `~/.pgpass`) and the password masked in everything it prints.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::CatalogueError;
use crate::settings::{non_empty, var};
use crate::util::mask_urls;

/// The catalogue arvis uses when the URL names none.
pub const DEFAULT_CATALOGUE: &str = "arvis";
/// pgvector's HNSW candidate list when the URL sets no `ef_search` (pgvector's own default is
/// 40; 100 keeps recall@10 ≥ 0.95 at a million vectors in pgvector's published runs).
pub const DEFAULT_EF_SEARCH: u32 = 100;
/// A server that does not answer within this long is reported, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the connection is encrypted (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `disable`: plain.
    Disable,
    /// `prefer` (libpq's default): TLS when the server offers it, certificate not checked.
    Prefer,
    /// `require`: TLS or nothing, certificate not checked.
    Require,
    /// `verify-ca`: TLS with a certificate chained to a trusted root.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate names the host.
    VerifyFull,
}

/// A parsed catalogue URL. Its `Display` and `Debug` never show the password.
#[derive(Clone)]
pub struct CatalogueUrl {
    /// As given (with the password): only ever handed to the driver.
    raw: String,
    pub(super) config: postgres::Config,
    /// The schema holding this catalogue's tables.
    pub schema: String,
    /// pgvector's `hnsw.ef_search` for searches.
    pub ef_search: u32,
    /// Encryption.
    pub tls: TlsMode,
    /// `sslrootcert`: the roots trusted for `verify-*` (else the public web roots).
    pub root_cert: Option<PathBuf>,
}

impl CatalogueUrl {
    /// Whether `s` is a catalogue URL rather than a directory.
    pub fn is_catalogue(s: &str) -> bool {
        let lower = s.trim_start().to_ascii_lowercase();
        lower.starts_with("postgres://") || lower.starts_with("postgresql://")
    }

    /// The URL as given, password included: only to hand on, never to print.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with its password masked.
    pub fn masked(&self) -> String {
        mask_urls(&self.raw)
    }

    /// `host:port` (or the socket directory) for messages.
    pub fn server(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// The role arvis connects as.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    /// The database.
    pub fn database(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("")
    }
}

impl std::fmt::Display for CatalogueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Debug for CatalogueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CatalogueUrl({})", self.masked())
    }
}

impl PartialEq for CatalogueUrl {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for CatalogueUrl {}

impl FromStr for CatalogueUrl {
    type Err = CatalogueError;

    fn from_str(raw: &str) -> Result<CatalogueUrl, CatalogueError> {
        let bad = |reason: String| CatalogueError::BadUrl {
            url: mask_urls(raw),
            reason: mask_urls(&reason),
        };
        if !CatalogueUrl::is_catalogue(raw) {
            return Err(bad("it must start with postgres:// or postgresql://".into()));
        }
        let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
        let mut kept = Vec::new();
        let mut schema = DEFAULT_CATALOGUE.to_string();
        let mut ef_search = DEFAULT_EF_SEARCH;
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key {
                "catalogue" | "catalog" => schema = check_catalogue_name(value).map_err(bad)?,
                "ef_search" => {
                    ef_search = value
                        .parse()
                        .ok()
                        .filter(|v| (1..=1000).contains(v))
                        .ok_or_else(|| bad(format!("ef_search={value}: give 1 to 1000")))?;
                }
                "sslmode" => {
                    tls = match value {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        other => {
                            return Err(bad(format!(
                                "sslmode={other}: give disable, prefer, require, verify-ca or verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(param),
            }
        }
        let driver_url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = postgres::Config::from_str(&driver_url).map_err(|e| bad(e.to_string()))?;
        // The driver negotiates TLS itself from this; arvis's connector decides what to check.
        config.ssl_mode(match tls {
            TlsMode::Disable => postgres::config::SslMode::Disable,
            TlsMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        if config.get_user().is_none() {
            let user = non_empty(var::PGUSER)
                .or_else(|| non_empty("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A server that vanishes mid-run (no RST) is noticed in seconds, not after TCP's hours.
        config.keepalives_idle(Duration::from_secs(10));
        config.tcp_user_timeout(Duration::from_secs(15));
        if config.get_application_name().is_none() {
            config.application_name("arvis");
        }
        let mut url = CatalogueUrl {
            raw: raw.to_string(),
            config,
            schema,
            ef_search,
            tls,
            root_cert,
        };
        if url.config.get_password().is_none()
            && let Some(password) = non_empty(var::PGPASSWORD).or_else(|| url.pgpass_password())
        {
            url.config.password(password);
        }
        Ok(url)
    }
}

/// A catalogue name is a schema name arvis quotes nowhere: lowercase letters, digits and `_`.
fn check_catalogue_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "catalogue={name}: a catalogue name is 1-63 lowercase letters, digits and _, not starting with a digit or pg_"
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CatalogueUrl {
    /// The password `~/.pgpass` (or `PGPASSFILE`) holds for this host, port, database and user
    /// (libpq's format: `host:port:database:user:password`, `*` matches anything, `\:` and
    /// `\\` escape). libpq ignores a file others can read; so does this.
    fn pgpass_password(&self) -> Option<String> {
        let path = non_empty(var::PGPASSFILE)
            .map(PathBuf::from)
            .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).ok()?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "ignoring {}: it must not be readable by others (chmod 0600)",
                    path.display()
                );
                return None;
            }
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "localhost".into(),
        };
        let port = self
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let wanted = [host.as_str(), &port, self.database(), self.user()];
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .find_map(|line| {
                let fields = split_pgpass(line);
                if fields.len() != 5 {
                    return None;
                }
                let matches = fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(f, w)| f == "*" || f == w);
                matches.then(|| fields[4].clone())
            })
    }
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next()
                    && let Some(f) = fields.last_mut()
                {
                    f.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arvis_parameters_are_taken_out_and_the_password_never_shown() {
        let url: CatalogueUrl =
            "postgresql://shop:pa%3Ass@127.0.0.1:5433/cat?catalogue=counter_2&ef_search=64&sslmode=require"
                .parse()
                .unwrap();
        assert_eq!(url.schema, "counter_2");
        assert_eq!(url.ef_search, 64);
        assert_eq!(url.tls, TlsMode::Require);
        assert_eq!(url.server(), "127.0.0.1:5433");
        assert_eq!(url.user(), "shop");
        assert_eq!(url.database(), "cat");
        assert_eq!(url.config.get_password(), Some(&b"pa:ss"[..]));
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(
                !shown.contains("pa%3Ass") && shown.contains("shop:***@"),
                "{shown}"
            );
        }
        let url: CatalogueUrl = "postgres://h/db".parse().unwrap();
        assert_eq!(
            (url.schema.as_str(), url.ef_search),
            ("arvis", DEFAULT_EF_SEARCH)
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason_and_no_password() {
        for (raw, reason) in [
            (
                "postgres://u:topsecret@h/db?catalogue=Bad-Name",
                "catalogue name",
            ),
            (
                "postgres://u:topsecret@h/db?catalogue=pg_x",
                "catalogue name",
            ),
            ("postgres://u:topsecret@h/db?ef_search=0", "ef_search"),
            ("postgres://u:topsecret@h/db?sslmode=sometimes", "sslmode"),
            ("postgres://u:topsecret@h/db?nonsense=1", "nonsense"),
            ("/a/dir", "postgres://"),
        ] {
            let e = raw.parse::<CatalogueUrl>().unwrap_err().to_string();
            assert!(e.contains(reason), "{raw}: {e}");
            assert!(!e.contains("topsecret"), "{e}");
        }
    }

    #[test]
    fn pgpass_lines_are_split_with_escapes() {
        assert_eq!(
            split_pgpass(r"db\:host:5432:*:me:pa\:ss:word"),
            ["db:host", "5432", "*", "me", "pa:ss:word"]
        );
    }
}
