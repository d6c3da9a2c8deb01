//! Pure parsers for command-line values: endpoint lists, cell specs, member lists.
//!
//! Every parser returns a message that says what was expected, so clap can print it next
//! to the flag that was wrong.

/// The largest number of endpoints one `--endpoints` list may hold.
pub const ENDPOINTS_MAX: usize = 64;

/// An ordered list of `host:port` gRPC endpoints; the client tries them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(pub Vec<String>);

/// Parses `host:port[,host:port...]`. An `http://` prefix is accepted and removed; blanks
/// around entries are ignored; an empty list is an error.
pub fn parse_endpoints(s: &str) -> Result<EndpointList, String> {
    let mut out = Vec::new();
    for raw in s.split(',') {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let entry = entry.strip_prefix("http://").unwrap_or(entry);
        if entry.starts_with("https://") {
            return Err(format!("`{entry}`: TLS endpoints are not supported yet; use host:port"));
        }
        check_host_port(entry)?;
        out.push(entry.to_string());
    }
    if out.is_empty() {
        return Err("expected host:port[,host:port...], got an empty list".to_string());
    }
    if out.len() > ENDPOINTS_MAX {
        return Err(format!("{} endpoints given; at most {ENDPOINTS_MAX}", out.len()));
    }
    Ok(EndpointList(out))
}

/// Checks `host:port` (IPv6 hosts in brackets, `[::1]:7001`).
pub fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
                return Err(format!("`{s}`: write an IPv6 host in brackets, like [::1]:7001"));
            }
            Ok(())
        }
        _ => Err(format!("`{s}` is not host:port (port 1..=65535)")),
    }
}

/// A `--initial-members` list: `id=host:port` entries (one clap value, so an empty list
/// can be given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberList(pub Vec<String>);

/// Parses a `--initial-members` list, `1=127.0.0.1:7001,2=127.0.0.1:7002`. An empty string
/// is an empty list, so `--initial-members ""` clears the list of a config file. The
/// entries are checked in detail by `Config::validate`; here only the shape is checked.
pub fn parse_members(s: &str) -> Result<MemberList, String> {
    let mut out = Vec::new();
    for raw in s.split(',') {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let (id, addr) = entry.split_once('=').ok_or_else(|| format!("`{entry}` is not of the form id=host:port"))?;
        id.trim().parse::<u64>().map_err(|_| format!("`{entry}`: node id `{id}` is not a number"))?;
        check_host_port(addr.trim())?;
        out.push(format!("{}={}", id.trim(), addr.trim()));
    }
    Ok(MemberList(out))
}

/// A cell to set: `family:qualifier=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub family: String,
    pub qualifier: String,
    pub value: String,
}

/// A cell to delete: `family:qualifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSpec {
    pub family: String,
    pub qualifier: String,
}

/// Parses `family:qualifier=value`. The family ends at the first `:`, the qualifier at the
/// first `=` after it; the value is the rest and may contain `:` and `=`. The qualifier may
/// be empty (`f:=v` sets the key-value cell of family `f`).
pub fn parse_set(s: &str) -> Result<SetSpec, String> {
    let (cell, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not family:qualifier=value (no `=`)"))?;
    let CellSpec { family, qualifier } = parse_cell(cell)?;
    Ok(SetSpec { family, qualifier, value: value.to_string() })
}

/// Parses `family:qualifier`. The family ends at the first `:`; the qualifier is the rest.
pub fn parse_cell(s: &str) -> Result<CellSpec, String> {
    let (family, qualifier) = s.split_once(':').ok_or_else(|| format!("`{s}` is not family:qualifier (no `:`)"))?;
    if family.is_empty() {
        return Err(format!("`{s}`: the family name is empty"));
    }
    Ok(CellSpec { family: family.to_string(), qualifier: qualifier.to_string() })
}

/// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d` into seconds, from 1 to `max_secs`.
pub fn parse_duration_secs(s: &str, max_secs: u64) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("`{s}`: expected a number and a unit, like 365d, 12h, 10m or 30s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3_600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    if secs == 0 || secs > max_secs {
        return Err(format!("`{s}`: must be more than 0 and at most {}d", max_secs / 86_400));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_order_and_trim() {
        let e = parse_endpoints(" 127.0.0.1:7001, node-2:7002 ,http://[::1]:7003,").unwrap();
        assert_eq!(e.0, vec!["127.0.0.1:7001", "node-2:7002", "[::1]:7003"]);
    }

    #[test]
    fn endpoints_reject_bad_entries() {
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints(" , ").is_err());
        assert!(parse_endpoints("127.0.0.1").unwrap_err().contains("host:port"));
        assert!(parse_endpoints("127.0.0.1:70000").is_err());
        assert!(parse_endpoints("127.0.0.1:0").is_err());
        assert!(parse_endpoints(":7001").is_err());
        assert!(parse_endpoints("::1:7001").unwrap_err().contains("brackets"));
        assert!(parse_endpoints("https://a:1").unwrap_err().contains("TLS"));
        let many = vec!["a:1"; ENDPOINTS_MAX + 1].join(",");
        assert!(parse_endpoints(&many).is_err());
    }

    #[test]
    fn members_parse_and_empty_clears() {
        assert_eq!(parse_members("1=127.0.0.1:7001, 2 = 127.0.0.1:7002").unwrap().0, vec!["1=127.0.0.1:7001", "2=127.0.0.1:7002"]);
        assert_eq!(parse_members("").unwrap().0, Vec::<String>::new());
        assert!(parse_members("127.0.0.1:7001").is_err());
        assert!(parse_members("x=127.0.0.1:7001").is_err());
        assert!(parse_members("1=127.0.0.1").is_err());
    }

    #[test]
    fn set_spec_splits_at_first_colon_then_first_equals() {
        assert_eq!(
            parse_set("identity:ho_ten=Nguyễn Văn An").unwrap(),
            SetSpec { family: "identity".into(), qualifier: "ho_ten".into(), value: "Nguyễn Văn An".into() }
        );
        // The value may hold `=` and `:`; the qualifier may hold `:`.
        assert_eq!(parse_set("f:a:b=x=y:z").unwrap(), SetSpec { family: "f".into(), qualifier: "a:b".into(), value: "x=y:z".into() });
        assert_eq!(parse_set("f:=v").unwrap(), SetSpec { family: "f".into(), qualifier: "".into(), value: "v".into() });
        assert_eq!(parse_set("f:q=").unwrap().value, "");
        assert!(parse_set("f:q").unwrap_err().contains("no `=`"));
        assert!(parse_set("fq=v").unwrap_err().contains("no `:`"));
        assert!(parse_set(":q=v").unwrap_err().contains("family name is empty"));
    }

    #[test]
    fn cell_spec() {
        assert_eq!(parse_cell("residence:dia_chi").unwrap(), CellSpec { family: "residence".into(), qualifier: "dia_chi".into() });
        assert_eq!(parse_cell("f:").unwrap().qualifier, "");
        assert!(parse_cell("residence").is_err());
        assert!(parse_cell(":q").is_err());
    }
}
