//! Pure: what tigera/operator's migration converter does with a leftover `FELIX_*` env
//! var of calico-node (one no other handler consumed): `handleFelixVars` patches it into
//! FelixConfiguration `default` when its name is a field of the operator's copy of
//! `FelixConfigurationSpec` and its value converts to the field's type
//! (`pkg/controller/migration/convert/felix_vars.go`: v1.17.4 :38-208, v1.38.6 :59-253),
//! else `Convert` fails with Go's error text. The field table is transcribed from
//! `pkg/apis/crd.projectcalico.org/v1/felixconfig.go` at v1.17.4 (v1.20.x differs only
//! in a json tag) and v1.38.6, and the conversions follow Go's `strconv`, `time` and
//! numorstring. Both the sandbox's operator and `plan` read this module, so they agree
//! on this upstream data by construction (as with `helm`); which handler consumes
//! which var stays each side's own model.

/// How `convert` (felix_vars.go) reads a value into a field of this Go type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `string`, `*string`, `*IptablesBackend`, `*AWSSrcDstCheckOption`: taken as is.
    Text,
    /// `*[]string`: split on commas, never refused.
    List,
    /// `*bool`: `strconv.ParseBool`.
    Bool,
    /// `*int`: `strconv.Atoi`.
    Int,
    /// `*uint32`: `strconv.ParseUint(s, 10, 32)`.
    Uint32,
    /// `*metav1.Duration`: `time.ParseDuration`.
    Duration,
    /// `*[]ProtoPort`: `<proto>:<port>,...`.
    ProtoPorts,
    /// `*[]numorstring.Port`: `numorstring.PortFromString` per comma-separated item.
    Ports,
    /// `*numorstring.Port`: converted from v1.29.0 (commit bdeae21d); before, no case
    /// of `convert` matches it.
    Port,
    /// `*RouteTableRange`: `<min>-<max>`.
    RouteTableRange,
    /// A type no case of `convert` matches: "unrecognized type" with Go's `%s` of a
    /// typed nil pointer of this type.
    Other(&'static str),
}
use FieldKind::*;

/// `FelixConfigurationSpec` at v1.17.4 (pkg/apis/crd.projectcalico.org/v1/felixconfig.go:
/// 54-352): lower-cased Go field name and kind. `patchFromVal` matches the env name
/// without `FELIX_`, lower-cased, against the lower-cased field name (felix_vars.go:87).
const V1_17_4: &[(&str, FieldKind)] = &[
    ("awssrcdstcheck", Text),
    ("bpfconnecttimeloadbalancingenabled", Bool),
    ("bpfdataifacepattern", Text),
    ("bpfdisableunprivileged", Bool),
    ("bpfenabled", Bool),
    ("bpfexternalservicemode", Text),
    ("bpfkubeproxyendpointslicesenabled", Bool),
    ("bpfkubeproxyiptablescleanupenabled", Bool),
    ("bpfkubeproxyminsyncperiod", Duration),
    ("bpfloglevel", Text),
    ("chaininsertmode", Text),
    ("dataplanedriver", Text),
    ("debugdisablelogdropping", Bool),
    ("debugmemoryprofilepath", Text),
    ("debugsimulatecalcgraphhangafter", Duration),
    ("debugsimulatedataplanehangafter", Duration),
    ("defaultendpointtohostaction", Text),
    ("devicerouteprotocol", Int),
    ("deviceroutesourceaddress", Text),
    ("disableconntrackinvalidcheck", Bool),
    ("endpointreportingdelay", Duration),
    ("endpointreportingenabled", Bool),
    ("externalnodescidrlist", List),
    ("failsafeinboundhostports", ProtoPorts),
    ("failsafeoutboundhostports", ProtoPorts),
    ("featuredetectoverride", Text),
    ("genericxdpenabled", Bool),
    ("healthenabled", Bool),
    ("healthhost", Text),
    ("healthport", Int),
    ("interfaceexclude", Text),
    ("interfaceprefix", Text),
    ("interfacerefreshinterval", Duration),
    ("ipipenabled", Bool),
    ("ipipmtu", Int),
    ("ipsetsrefreshinterval", Duration),
    ("iptablesbackend", Text),
    ("iptablesfilterallowaction", Text),
    ("iptableslockfilepath", Text),
    ("iptableslockprobeinterval", Duration),
    ("iptableslocktimeout", Duration),
    ("iptablesmangleallowaction", Text),
    ("iptablesmarkmask", Uint32),
    ("iptablesnatoutgoinginterfacefilter", Text),
    ("iptablespostwritecheckinterval", Duration),
    ("iptablesrefreshinterval", Duration),
    ("ipv6support", Bool),
    ("kubenodeportranges", Ports),
    ("logfilepath", Text),
    ("logprefix", Text),
    ("logseverityfile", Text),
    ("logseverityscreen", Text),
    ("logseveritysys", Text),
    ("maxipsetsize", Int),
    ("metadataaddr", Text),
    ("metadataport", Int),
    ("natoutgoingaddress", Text),
    ("natportrange", Port),
    ("netlinktimeout", Duration),
    ("openstackregion", Text),
    ("policysyncpathprefix", Text),
    ("prometheusgometricsenabled", Bool),
    ("prometheusmetricsenabled", Bool),
    ("prometheusmetricshost", Text),
    ("prometheusmetricsport", Int),
    ("prometheusprocessmetricsenabled", Bool),
    ("prometheusreporterport", Int),
    ("removeexternalroutes", Bool),
    ("reportinginterval", Duration),
    ("reportingttl", Duration),
    ("routerefreshinterval", Duration),
    ("routesource", Text),
    ("routetablerange", RouteTableRange),
    ("sidecaraccelerationenabled", Bool),
    ("usagereportingenabled", Bool),
    ("usagereportinginitialdelay", Duration),
    ("usagereportinginterval", Duration),
    ("useinternaldataplanedriver", Bool),
    ("vxlanenabled", Bool),
    ("vxlanmtu", Int),
    ("vxlanport", Int),
    ("vxlanvni", Int),
    ("wireguardenabled", Bool),
    ("wireguardinterfacename", Text),
    ("wireguardlisteningport", Int),
    ("wireguardmtu", Int),
    ("wireguardroutingrulepriority", Int),
    ("xdpenabled", Bool),
    ("xdprefreshinterval", Duration),
];

/// `FelixConfigurationSpec` at v1.38.6 (felixconfig.go:69-): as [`V1_17_4`], matched with
/// `strings.EqualFold` (felix_vars.go:120).
const V1_38_6: &[(&str, FieldKind)] = &[
    ("awssrcdstcheck", Text),
    ("bpfconnecttimeloadbalancingenabled", Bool),
    ("bpfdataifacepattern", Text),
    ("bpfdisableunprivileged", Bool),
    ("bpfenabled", Bool),
    ("bpfexternalservicemode", Text),
    ("bpfhostconntrackbypass", Bool),
    ("bpfkubeproxyendpointslicesenabled", Bool),
    ("bpfkubeproxyiptablescleanupenabled", Bool),
    ("bpfkubeproxyminsyncperiod", Duration),
    ("bpfloglevel", Text),
    ("chaininsertmode", Text),
    ("dataplanedriver", Text),
    ("debugdisablelogdropping", Bool),
    ("debugmemoryprofilepath", Text),
    ("debugsimulatecalcgraphhangafter", Duration),
    ("debugsimulatedataplanehangafter", Duration),
    ("defaultendpointtohostaction", Text),
    ("devicerouteprotocol", Int),
    ("deviceroutesourceaddress", Text),
    ("disableconntrackinvalidcheck", Bool),
    ("dnstrustedservers", List),
    ("egressipvxlanport", Int),
    ("egressipvxlanvni", Int),
    ("endpointreportingdelay", Duration),
    ("endpointreportingenabled", Bool),
    ("endpointstatuspathprefix", Text),
    ("externalnodescidrlist", List),
    ("failsafeinboundhostports", ProtoPorts),
    ("failsafeoutboundhostports", ProtoPorts),
    ("featuredetectoverride", Text),
    ("genericxdpenabled", Bool),
    ("healthenabled", Bool),
    ("healthhost", Text),
    ("healthport", Int),
    ("interfaceexclude", Text),
    ("interfaceprefix", Text),
    ("interfacerefreshinterval", Duration),
    ("ipipenabled", Bool),
    ("ipipmtu", Int),
    ("ipsetsrefreshinterval", Duration),
    ("iptablesbackend", Text),
    ("iptablesfilterallowaction", Text),
    ("iptableslockfilepath", Text),
    ("iptableslockprobeinterval", Duration),
    ("iptableslocktimeout", Duration),
    ("iptablesmangleallowaction", Text),
    ("iptablesmarkmask", Uint32),
    ("iptablesnatoutgoinginterfacefilter", Text),
    ("iptablespostwritecheckinterval", Duration),
    ("iptablesrefreshinterval", Duration),
    ("ipv6support", Bool),
    ("kubenodeportranges", Ports),
    ("logfilepath", Text),
    ("logprefix", Text),
    ("logseverityfile", Text),
    ("logseverityscreen", Text),
    ("logseveritysys", Text),
    ("maxipsetsize", Int),
    ("metadataaddr", Text),
    ("metadataport", Int),
    ("natoutgoingaddress", Text),
    ("natportrange", Port),
    ("netlinktimeout", Duration),
    ("nftablesmode", Other("*v1.NFTablesMode")),
    ("openstackregion", Text),
    ("policysyncpathprefix", Text),
    ("prometheusgometricsenabled", Bool),
    ("prometheusmetricsenabled", Bool),
    ("prometheusmetricshost", Text),
    ("prometheusmetricsport", Int),
    ("prometheusprocessmetricsenabled", Bool),
    ("prometheusreporterport", Int),
    ("removeexternalroutes", Bool),
    ("reportinginterval", Duration),
    ("reportingttl", Duration),
    ("routerefreshinterval", Duration),
    ("routesource", Text),
    ("routetablerange", RouteTableRange),
    ("sidecaraccelerationenabled", Bool),
    ("tproxymode", Other("*v1.TPROXYModeOption")),
    ("usagereportingenabled", Bool),
    ("usagereportinginitialdelay", Duration),
    ("usagereportinginterval", Duration),
    ("useinternaldataplanedriver", Bool),
    ("vxlanenabled", Bool),
    ("vxlanmtu", Int),
    ("vxlanport", Int),
    ("vxlanvni", Int),
    ("wafeventlogsfileenabled", Bool),
    ("wireguardenabled", Bool),
    ("wireguardenabledv6", Bool),
    ("wireguardhostencryptionenabled", Bool),
    ("wireguardinterfacename", Text),
    ("wireguardinterfacenamev6", Text),
    ("wireguardlisteningport", Int),
    ("wireguardlisteningportv6", Int),
    ("wireguardmtu", Int),
    ("wireguardmtuv6", Int),
    ("wireguardpersistentkeepalive", Duration),
    ("wireguardroutingrulepriority", Int),
    ("xdpenabled", Bool),
    ("xdprefreshinterval", Duration),
];

/// An operator release as (major, minor, patch).
pub type Version = (u32, u32, u32);

/// The field table of the operator at `version`: v1.38.6's from v1.38.0 on, v1.17.4's
/// before (v1.17.x and v1.20.x; the releases between are not modelled field by field).
pub fn fields(version: Version) -> &'static [(&'static str, FieldKind)] {
    if version >= (1, 38, 0) {
        V1_38_6
    } else {
        V1_17_4
    }
}

/// The field `FELIX_<name>` patches, if any.
pub fn field(env_name: &str, version: Version) -> Option<FieldKind> {
    let key = env_name
        .strip_prefix("FELIX_")
        .unwrap_or(env_name)
        .to_lowercase();
    fields(version)
        .iter()
        .find(|(f, _)| *f == key)
        .map(|(_, k)| *k)
}

/// What `handleFelixVars` does with leftover env var `name` = `value` (the resolved
/// value): Ok when it becomes a patch (or, from v1.26.0, is skipped), Err with the error
/// `Convert` returns (a plain error, not `ErrIncompatibleCluster`: the operator reports
/// "Error converting existing installation: <it>").
pub fn patch_error(name: &str, value: &str, version: Version) -> Result<(), String> {
    let mut value = value.to_string();
    if version >= (1, 26, 0) {
        // v1.38.6 felix_vars.go:85-87 (commit 426d26d3): auto is FelixConfiguration's
        // default and no value of the field, so nothing is patched.
        if name == "FELIX_IPTABLESBACKEND" && value.to_lowercase() == "auto" {
            return Ok(());
        }
        // :53-55, 90-93 (commit 8ba68c55): seconds without a unit get one.
        if name == "FELIX_IPTABLESREFRESHINTERVAL" && !value.ends_with('s') {
            value.push('s');
        }
    }
    let key = name.strip_prefix("FELIX_").unwrap_or(name).to_lowercase();
    let Some(kind) = field(name, version) else {
        // v1.17.4 felix_vars.go:103, v1.38.6 :136.
        return Err(format!("unrecognized felix config setting: {key}"));
    };
    convert(kind, &value, version)
}

/// felix_vars.go `convert` (v1.17.4 :108-208, v1.38.6 :141-253).
fn convert(kind: FieldKind, s: &str, version: Version) -> Result<(), String> {
    match kind {
        Text | List => Ok(()),
        Bool => parse_bool(s).map(|_| ()),
        Int => atoi(s).map(|_| ()),
        Uint32 => parse_uint("ParseUint", s, 32).map(|_| ()),
        Duration => parse_duration(s).map(|_| ()),
        ProtoPorts => {
            if version >= (1, 26, 0) && s == "none" {
                return Ok(());
            }
            for pp in s.split(',') {
                let vals: Vec<&str> = pp.split(':').collect();
                if vals.len() != 2 {
                    return Err(if version >= (1, 26, 0) {
                        format!(
                            "could not convert protoport '{pp}': must be of form <proto>:<port>"
                        )
                    } else {
                        "could not convert protoport: must be of form <proto>:<port>".into()
                    });
                }
                if parse_uint("ParseUint", vals[1], 16).is_err() {
                    // Upstream names the protocol here, not the port.
                    return Err(format!("could not convert port to number: {}", vals[0]));
                }
            }
            Ok(())
        }
        Ports => s.split(',').try_for_each(port_from_string),
        Port if version >= (1, 29, 0) => port_from_string(s),
        Port => Err(unrecognized_type("*numorstring.Port")),
        RouteTableRange => {
            let parts: Vec<&str> = s.split('-').collect();
            if parts.len() != 2 {
                // `fmt.Errorf("")`.
                return Err(String::new());
            }
            atoi(parts[0])?;
            atoi(parts[1]).map(|_| ())
        }
        Other(t) => Err(unrecognized_type(t)),
    }
}

/// `fmt.Errorf("unrecognized type: %s", t)` for a typed nil pointer without a String
/// method: `%!s(*pkg.T=<nil>)`.
fn unrecognized_type(t: &str) -> String {
    format!("unrecognized type: %!s({t}=<nil>)")
}

/// Go's `strconv.Quote` for the strings these messages carry.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn num_error(func: &str, s: &str, what: &str) -> String {
    format!("strconv.{func}: parsing {}: {what}", go_quote(s))
}

/// `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(num_error("ParseBool", s, "invalid syntax")),
    }
}

/// `strconv.ParseUint(s, 10, bits)`, the error naming `func` (ParseUint, or the caller
/// that wraps it).
pub fn parse_uint(func: &str, s: &str, bits: u32) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(num_error(func, s, "invalid syntax"));
    }
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    match s.parse::<u64>() {
        Ok(v) if v <= max => Ok(v),
        _ => Err(num_error(func, s, "value out of range")),
    }
}

/// `strconv.ParseInt(s, 10, bits)` (errors as `func`).
pub fn parse_int(func: &str, s: &str, bits: u32) -> Result<i64, String> {
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let u = parse_uint(func, digits, 64).map_err(|e| e.replace(&go_quote(digits), &go_quote(s)))?;
    let cutoff = 1u64 << (bits - 1);
    if (!neg && u >= cutoff) || (neg && u > cutoff) {
        return Err(num_error(func, s, "value out of range"));
    }
    Ok(if neg {
        (u as i64).wrapping_neg()
    } else {
        u as i64
    })
}

/// `strconv.Atoi` (64-bit int).
pub fn atoi(s: &str) -> Result<i64, String> {
    parse_int("Atoi", s, 64)
}

/// `numorstring.PortFromString` (the operator's copy at v1.17.4, tigera/api's from
/// v1.29.0: the same rules): a port, `<min>:<max>`, or a port name.
pub fn port_from_string(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return parse_uint("ParseUint", s, 16)
            .map(|_| ())
            .map_err(|_| format!("invalid port format ({s})"));
    }
    if let Some((a, b)) = s.split_once(':') {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
        if digits(a) && digits(b) {
            let min = parse_uint("ParseUint", a, 16)
                .map_err(|_| format!("invalid minimum port number in range ({s})"))?;
            let max = parse_uint("ParseUint", b, 16)
                .map_err(|_| format!("invalid maximum port number in range ({s})"))?;
            if min > max {
                return Err(format!(
                    "minimum port number ({min}) is greater than maximum port number ({max}) in port range"
                ));
            }
            return Ok(());
        }
    }
    let name_ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if name_ok {
        Ok(())
    } else {
        Err(format!("invalid name for named port ({s})"))
    }
}

/// Go's `time.ParseDuration` (error texts of Go 1.15 and later, which quote the input).
pub fn parse_duration(orig: &str) -> Result<(), String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    if let Some(rest) = s.strip_prefix(['-', '+']) {
        s = rest;
    }
    if s == "0" {
        return Ok(());
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let v: u128 = if int_len == 0 {
            0
        } else {
            s[..int_len].parse::<u128>().map_err(|_| invalid())?
        };
        if v > (1u128 << 63) {
            return Err(invalid());
        }
        s = &s[int_len..];
        let mut frac_len = 0;
        if let Some(rest) = s.strip_prefix('.') {
            frac_len = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
            s = &rest[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ));
            }
        };
        total = total.saturating_add(v.saturating_mul(nanos));
        if total > (1u128 << 63) {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_conversions_word_their_errors_as_go_does() {
        assert_eq!(
            parse_bool("yes"),
            Err("strconv.ParseBool: parsing \"yes\": invalid syntax".into())
        );
        assert_eq!(
            atoi("12x"),
            Err("strconv.Atoi: parsing \"12x\": invalid syntax".into())
        );
        assert_eq!(atoi("-42"), Ok(-42));
        assert_eq!(
            parse_int("ParseInt", "99999999999", 32),
            Err("strconv.ParseInt: parsing \"99999999999\": value out of range".into())
        );
        assert_eq!(
            parse_uint("ParseUint", "+1", 32),
            Err("strconv.ParseUint: parsing \"+1\": invalid syntax".into())
        );
        assert_eq!(parse_duration("1m30s"), Ok(()));
        assert_eq!(parse_duration(".5h"), Ok(()));
        assert_eq!(parse_duration("0"), Ok(()));
        assert_eq!(
            parse_duration("90"),
            Err("time: missing unit in duration \"90\"".into())
        );
        assert_eq!(
            parse_duration("5q"),
            Err("time: unknown unit \"q\" in duration \"5q\"".into())
        );
        assert_eq!(
            parse_duration(""),
            Err("time: invalid duration \"\"".into())
        );
        assert_eq!(port_from_string("http"), Ok(()));
        assert_eq!(
            port_from_string("30000:20000"),
            Err("minimum port number (30000) is greater than maximum port number (20000) in port range".into())
        );
        assert_eq!(
            port_from_string("70000"),
            Err("invalid port format (70000)".into())
        );
        assert_eq!(
            port_from_string("a b"),
            Err("invalid name for named port (a b)".into())
        );
    }

    #[test]
    fn leftover_felix_vars_follow_the_tags() {
        let (old, new) = ((1, 17, 4), (1, 38, 6));
        // The chart's leftovers patch on every line.
        for v in [old, (1, 20, 4), new] {
            assert_eq!(patch_error("FELIX_ROUTESOURCE", "WorkloadIPs", v), Ok(()));
            assert_eq!(patch_error("FELIX_IPV6SUPPORT", "false", v), Ok(()));
        }
        assert_eq!(
            patch_error("FELIX_NOSUCHTHING", "1", new),
            Err("unrecognized felix config setting: nosuchthing".into())
        );
        // A field v1.38.6 has and v1.17.4 lacks.
        assert_eq!(patch_error("FELIX_WIREGUARDMTUV6", "1400", new), Ok(()));
        assert_eq!(
            patch_error("FELIX_WIREGUARDMTUV6", "1400", old),
            Err("unrecognized felix config setting: wireguardmtuv6".into())
        );
        // Unitless refresh interval: refused before v1.26.0, seconds after.
        assert_eq!(
            patch_error("FELIX_IPTABLESREFRESHINTERVAL", "90", old),
            Err("time: missing unit in duration \"90\"".into())
        );
        assert_eq!(
            patch_error("FELIX_IPTABLESREFRESHINTERVAL", "90", new),
            Ok(())
        );
        assert_eq!(
            patch_error("FELIX_FAILSAFEINBOUNDHOSTPORTS", "none", old),
            Err("could not convert protoport: must be of form <proto>:<port>".into())
        );
        assert_eq!(
            patch_error("FELIX_FAILSAFEINBOUNDHOSTPORTS", "none", new),
            Ok(())
        );
        assert_eq!(
            patch_error("FELIX_FAILSAFEINBOUNDHOSTPORTS", "tcp:22,udp", new),
            Err("could not convert protoport 'udp': must be of form <proto>:<port>".into())
        );
        assert_eq!(
            patch_error("FELIX_NATPORTRANGE", "32768:65535", old),
            Err("unrecognized type: %!s(*numorstring.Port=<nil>)".into())
        );
        assert_eq!(
            patch_error("FELIX_NATPORTRANGE", "32768:65535", new),
            Ok(())
        );
        assert_eq!(
            patch_error("FELIX_NFTABLESMODE", "Enabled", new),
            Err("unrecognized type: %!s(*v1.NFTablesMode=<nil>)".into())
        );
        assert_eq!(patch_error("FELIX_ROUTETABLERANGE", "1-250", old), Ok(()));
        assert_eq!(
            patch_error("FELIX_ROUTETABLERANGE", "1", old),
            Err(String::new())
        );
        assert_eq!(patch_error("FELIX_IPTABLESBACKEND", "Auto", new), Ok(()));
        assert_eq!(
            patch_error("FELIX_HEALTHPORT", "x", new),
            Err("strconv.Atoi: parsing \"x\": invalid syntax".into())
        );
        assert_eq!(fields(old).len(), 89);
        assert_eq!(fields(new).len(), 103);
    }
}
