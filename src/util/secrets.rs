//! Credentials never reach a screen or a log: every URL arvis prints goes through [`mask_urls`].

/// What a masked secret reads as.
const MASK: &str = "***";

/// `text` with the password of every `scheme://user:password@host` URL in it, and the value
/// of every `password=` parameter, replaced by [`MASK`]. Works on whole messages (an error
/// that quotes a URL), not only on a bare URL.
pub fn mask_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace; its userinfo at the last '@'.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_password_params(&out)
}

/// `password=...` (in a query string or a key=value connection string) → `password=***`.
fn mask_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let before_ok = i == 0
            || rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| matches!(c, '?' | '&' | ' ' | ';') || c.is_whitespace());
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        if !before_ok {
            rest = tail;
            continue;
        }
        let end = tail
            .find(|c: char| matches!(c, '&' | '#' | ';') || c.is_whitespace())
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(MASK);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_parameters_are_masked_wherever_they_are() {
        let cases = [
            (
                "postgres://shop:s3cr3t@db.local:5432/arvis",
                "postgres://shop:***@db.local:5432/arvis",
            ),
            (
                "failed: postgresql://a:b%40c@h/d?sslmode=require then rtsp://cam:pw@10.0.0.2/live",
                "failed: postgresql://a:***@h/d?sslmode=require then rtsp://cam:***@10.0.0.2/live",
            ),
            // '@' inside the password: the userinfo ends at the last '@'.
            ("rtsp://u:p@ss@cam/x", "rtsp://u:***@cam/x"),
            ("postgres://user@h/db", "postgres://user@h/db"),
            (
                "postgres://h/db?user=u&password=pw&x=1",
                "postgres://h/db?user=u&password=***&x=1",
            ),
            ("host=h password=pw user=u", "host=h password=*** user=u"),
            ("PASSWORD=pw", "PASSWORD=***"),
            ("no url here: a://", "no url here: a://"),
            ("/a/b/old_password=x", "/a/b/old_password=x"),
        ];
        for (raw, masked) in cases {
            assert_eq!(mask_urls(raw), masked, "{raw}");
        }
    }
}
