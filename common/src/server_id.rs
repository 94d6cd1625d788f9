//! Parsing a server's `--id`: a number, or `hostname`, which takes the
//! number after the last `-` of the host name and adds one. Pods of a
//! Kubernetes StatefulSet are named `NAME-0`, `NAME-1`, …, so one pod
//! template gives every replica its id (1, 2, …) without a shell.

/// Parses an id flag: `N`, or `hostname` (resolved with [`hostname`]).
pub fn parse(s: &str) -> Result<u32, String> {
    if s.eq_ignore_ascii_case("hostname") {
        let host = hostname().ok_or_else(|| {
            "--id hostname: cannot read the host name (HOSTNAME is unset and /proc/sys/kernel/hostname is unreadable); pass a number".to_string()
        })?;
        return from_hostname(&host);
    }
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "invalid id {s:?}: use a number from 1, or 'hostname' to take it from a name ending in -N (id N+1)"
        )),
    }
}

/// The id a host name ending in `-N` stands for: N + 1.
pub fn from_hostname(host: &str) -> Result<u32, String> {
    let host = host.trim();
    let ordinal = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .ok_or_else(|| {
            format!(
                "--id hostname: host name {host:?} does not end in -N (as a StatefulSet pod's does); pass a number"
            )
        })?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| format!("--id hostname: ordinal in {host:?} is too large"))
}

/// This machine's host name: `HOSTNAME`, else the kernel's.
pub fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_statefulset_names() {
        assert_eq!(parse("3"), Ok(3));
        assert!(parse("0").is_err());
        assert!(parse("x").is_err());
        assert_eq!(from_hostname("participant-0"), Ok(1));
        assert_eq!(from_hostname("quintet-coordinator-2\n"), Ok(3));
        assert!(from_hostname("participant").is_err());
        assert!(from_hostname("participant-a").is_err());
    }
}
