//! Replica addresses: `s3://BUCKET[/PREFIX]` and
//! `sftp://[USER@]HOST[:PORT]/PATH`. Anything else is a local path.

use std::fmt;

/// Where a remote replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaUrl {
    /// An S3-compatible bucket; `prefix` has no leading or trailing `/`
    /// (empty: the whole bucket).
    S3 { bucket: String, prefix: String },
    /// A folder on an SFTP server; `path` is absolute, or relative to the
    /// login folder when it does not start with `/` after the host's `/`
    /// (`sftp://host/backup` is `backup` in the login folder,
    /// `sftp://host//srv/backup` is `/srv/backup`).
    Sftp {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
    },
}

impl ReplicaUrl {
    /// `None` for a local path; an error naming what is wrong for an
    /// address that is not usable.
    pub fn parse(text: &str) -> Option<Result<ReplicaUrl, String>> {
        if let Some(rest) = text.strip_prefix("s3://") {
            return Some(parse_s3(rest).map_err(|why| format!("replica {text}: {why}")));
        }
        if let Some(rest) = text.strip_prefix("sftp://") {
            return Some(parse_sftp(rest).map_err(|why| format!("replica {text}: {why}")));
        }
        None
    }

    /// The scheme, for messages.
    pub fn scheme(&self) -> &'static str {
        match self {
            ReplicaUrl::S3 { .. } => "s3",
            ReplicaUrl::Sftp { .. } => "sftp",
        }
    }
}

fn parse_s3(rest: &str) -> Result<ReplicaUrl, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // The bucket naming rules of S3 (3 to 63 lowercase letters, digits,
    // dots and hyphens), loosened to what other stores accept too.
    let valid = (1..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !valid {
        return Err("expected s3://BUCKET or s3://BUCKET/PREFIX".into());
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
        return Err("the prefix must not hold `.`, `..` or empty parts".into());
    }
    Ok(ReplicaUrl::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
    })
}

fn parse_sftp(rest: &str) -> Result<ReplicaUrl, String> {
    let usage = "expected sftp://[USER@]HOST[:PORT]/PATH";
    let (authority, path) = rest.split_once('/').ok_or(usage)?;
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return Err(usage.into()),
        None => (None, authority),
    };
    let (host, port) = match hostport.strip_prefix('[') {
        // An IPv6 literal: [::1]:22.
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(usage)?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?),
        None => None,
    };
    if host.is_empty() || path.trim_matches('/').is_empty() {
        return Err(usage.into());
    }
    let path = path.trim_end_matches('/');
    if path.split('/').any(|c| c == "..") {
        return Err("the path must not hold `..`".into());
    }
    Ok(ReplicaUrl::Sftp {
        user,
        host: host.into(),
        port,
        path: path.into(),
    })
}

impl fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ReplicaUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            ReplicaUrl::Sftp {
                user,
                host,
                port,
                path,
            } => {
                write!(f, "sftp://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                match host.contains(':') {
                    true => write!(f, "[{host}]")?,
                    false => write!(f, "{host}")?,
                }
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "/{path}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ReplicaUrl {
        ReplicaUrl::parse(text).unwrap().unwrap()
    }

    #[test]
    fn s3_addresses_name_a_bucket_and_a_prefix() {
        assert_eq!(
            ok("s3://backups/host/home/"),
            ReplicaUrl::S3 {
                bucket: "backups".into(),
                prefix: "host/home".into()
            }
        );
        assert_eq!(ok("s3://b").to_string(), "s3://b");
        assert_eq!(ok("s3://b/x/y").to_string(), "s3://b/x/y");
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/../x",
            "s3://b/x//y",
            "s3://b c/x",
        ] {
            assert!(ReplicaUrl::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn sftp_addresses_name_user_host_port_and_path() {
        assert_eq!(
            ok("sftp://me@example.org:2222//srv/backup/"),
            ReplicaUrl::Sftp {
                user: Some("me".into()),
                host: "example.org".into(),
                port: Some(2222),
                path: "/srv/backup".into()
            }
        );
        let v6 = ok("sftp://[::1]:22/b");
        assert_eq!(v6.to_string(), "sftp://[::1]:22/b");
        assert_eq!(ok("sftp://h/backup").to_string(), "sftp://h/backup");
        for bad in [
            "sftp://host",
            "sftp://host/",
            "sftp://@h/x",
            "sftp://h:x/y",
            "sftp://h/a/../b",
        ] {
            assert!(ReplicaUrl::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn local_paths_are_not_addresses() {
        for local in ["/srv/backup", "backup", "./s3://x", "S3://b"] {
            assert!(ReplicaUrl::parse(local).is_none(), "{local}");
        }
    }
}
