//! Rewriting the guest streamer's answer so that the viewer's browser sends
//! its media to the controller's relay: the one host candidate
//! `169.254.0.22 7071` (reachable only inside the VM's namespace) becomes
//! the relay's public address; any other candidate is dropped (nothing
//! outside the namespace could reach it, and it would leak guest details).

use std::net::SocketAddr;

/// The candidate `cand` (`candidate:...` or `a=candidate:...`) with its
/// address `from` replaced by `to`; `None` for a candidate of another
/// address or transport, or one naming `from`'s address in another field
/// too (its foundation, a related address).
pub fn rewrite_candidate(cand: &str, from: SocketAddr, to: SocketAddr) -> Option<String> {
    let mut f: Vec<&str> = cand.split_ascii_whitespace().collect();
    // foundation component transport priority address port "typ" type ...
    if f.len() < 8 || !f[0].contains("candidate:") || f[6] != "typ" {
        return None;
    }
    if !f[2].eq_ignore_ascii_case("udp") {
        return None;
    }
    let addr: std::net::IpAddr = f[4].parse().ok()?;
    let port: u16 = f[5].parse().ok()?;
    if addr != from.ip() || port != from.port() {
        return None;
    }
    let from_ip = from.ip().to_string();
    if f.iter()
        .enumerate()
        .any(|(i, x)| i != 4 && x.contains(&from_ip))
    {
        return None;
    }
    let ip = to.ip().to_string();
    let p = to.port().to_string();
    f[4] = &ip;
    f[5] = &p;
    Some(f.join(" "))
}

/// The answer `sdp` with every candidate rewritten by [`rewrite_candidate`]
/// (others dropped), and its `c=` and `m=` lines and `a=rtcp` naming the
/// relay. Line endings come out as CRLF, as SDP wants.
pub fn rewrite_answer(sdp: &str, from: SocketAddr, to: SocketAddr) -> String {
    let ip_kind = if to.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let new = if line.starts_with("a=candidate:") {
            match rewrite_candidate(line, from, to) {
                Some(c) => c,
                None => continue,
            }
        } else if let Some(rest) = line.strip_prefix("c=IN ") {
            match rest.split_once(' ') {
                Some((_, a)) if a == from.ip().to_string() => {
                    format!("c=IN {ip_kind} {}", to.ip())
                }
                _ => line.to_string(),
            }
        } else if let Some(rest) = line.strip_prefix("m=") {
            let mut parts: Vec<String> = rest.split(' ').map(str::to_string).collect();
            if parts.len() > 1 && parts[1] == from.port().to_string() {
                parts[1] = to.port().to_string();
            }
            format!("m={}", parts.join(" "))
        } else if let Some(rest) = line.strip_prefix("a=rtcp:") {
            let mut parts: Vec<String> = rest.split(' ').map(str::to_string).collect();
            if parts.first().map(String::as_str) == Some(&from.port().to_string()) {
                parts[0] = to.port().to_string();
                if parts.len() == 4 && parts[3] == from.ip().to_string() {
                    parts[2] = ip_kind.into();
                    parts[3] = to.ip().to_string();
                }
            }
            format!("a=rtcp:{}", parts.join(" "))
        } else {
            line.to_string()
        };
        out.push_str(&new);
        out.push_str("\r\n");
    }
    out
}

/// The first `a=ice-ufrag:` of an SDP.
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// The largest SDP answer taken from a guest's streamer.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most candidates taken from a guest's answer, counted in its SDP and
/// in the list beside it each.
pub const MAX_ANSWER_CANDIDATES: usize = 16;
/// The longest candidate taken from a guest.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// Checks an SDP answer a guest's streamer sent, before it is rewritten or
/// stored: at most [`MAX_ANSWER_BYTES`], starting with `v=0`, no control
/// characters but line breaks and tabs (a carriage return only before a line
/// feed), at most [`MAX_ANSWER_CANDIDATES`]
/// candidate lines of at most [`MAX_CANDIDATE_BYTES`] each.
pub fn check_answer(sdp: &str) -> Result<(), String> {
    if sdp.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "the SDP answer is {} bytes, more than {MAX_ANSWER_BYTES}",
            sdp.len()
        ));
    }
    if !sdp.trim_start().starts_with("v=0") {
        return Err("not an SDP answer (it must start with v=0)".into());
    }
    if sdp
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'))
    {
        return Err("the SDP answer contains control characters".into());
    }
    // A carriage return only ends a line: alone, it would let a parser that
    // breaks lines at it see lines these checks did not.
    if sdp
        .match_indices('\r')
        .any(|(i, _)| sdp.as_bytes().get(i + 1) != Some(&b'\n'))
    {
        return Err("the SDP answer has a carriage return that does not end a line".into());
    }
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    if candidates.len() > MAX_ANSWER_CANDIDATES {
        return Err(format!(
            "the SDP answer has {} candidates, more than {MAX_ANSWER_CANDIDATES}",
            candidates.len()
        ));
    }
    if candidates.iter().any(|c| c.len() > MAX_CANDIDATE_BYTES) {
        return Err(format!(
            "the SDP answer has a candidate longer than {MAX_CANDIDATE_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Checks an SDP offer a viewer sent: text starting with `v=0`, at most
/// 32 KiB, no control characters but line breaks and tabs.
pub fn check_offer(sdp: &str) -> Result<(), String> {
    if sdp.len() > 32 * 1024 {
        return Err("the SDP offer is larger than 32 KiB".into());
    }
    if !sdp.trim_start().starts_with("v=0") {
        return Err("not an SDP offer (it must start with v=0)".into());
    }
    if sdp
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'))
    {
        return Err("the SDP offer contains control characters".into());
    }
    if !sdp.contains("m=") {
        return Err("the SDP offer has no media section".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn guest() -> SocketAddr {
        "169.254.0.22:7071".parse().unwrap()
    }
    fn relay() -> SocketAddr {
        "203.0.113.9:40123".parse().unwrap()
    }

    const ANSWER: &str = "v=0\r\no=str0m-1 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
a=group:BUNDLE 0 1\r\nm=video 7071 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 169.254.0.22\r\n\
a=rtcp:7071 IN IP4 169.254.0.22\r\na=ice-ufrag:gUeS\r\na=ice-pwd:secretpwd\r\n\
a=candidate:1 1 udp 2130706175 169.254.0.22 7071 typ host\r\n\
a=candidate:2 1 udp 2130706175 10.0.2.15 7071 typ host\r\n\
a=candidate:3 1 tcp 2130706175 169.254.0.22 7071 typ host tcptype passive\r\n\
a=end-of-candidates\r\nm=application 7071 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 169.254.0.22\r\n";

    #[test]
    fn candidate_is_rewritten_and_others_dropped() {
        assert_eq!(
            rewrite_candidate(
                "candidate:1 1 udp 2130706175 169.254.0.22 7071 typ host",
                guest(),
                relay()
            )
            .as_deref(),
            Some("candidate:1 1 udp 2130706175 203.0.113.9 40123 typ host")
        );
        assert_eq!(
            rewrite_candidate(
                "candidate:1 1 UDP 1 169.254.0.22 7071 typ host generation 0",
                guest(),
                "[2001:db8::1]:5000".parse().unwrap()
            )
            .as_deref(),
            Some("candidate:1 1 UDP 1 2001:db8::1 5000 typ host generation 0")
        );
        for other in [
            "candidate:2 1 udp 1 10.0.2.15 7071 typ host",
            "candidate:2 1 udp 1 169.254.0.22 7072 typ host",
            "candidate:3 1 tcp 1 169.254.0.22 7071 typ host tcptype passive",
            "candidate:bad",
            "",
            "candidate:169.254.0.22 1 udp 1 169.254.0.22 7071 typ host",
            "candidate:1 1 udp 1 169.254.0.22 7071 typ host raddr 169.254.0.22 rport 7071",
        ] {
            assert_eq!(rewrite_candidate(other, guest(), relay()), None, "{other}");
        }
    }

    #[test]
    fn answer_names_only_the_relay() {
        let a = rewrite_answer(ANSWER, guest(), relay());
        assert!(!a.contains("169.254.0.22"), "{a}");
        assert!(!a.contains("10.0.2.15"), "{a}");
        assert!(!a.contains(" 7071"), "{a}");
        assert!(a.contains("a=candidate:1 1 udp 2130706175 203.0.113.9 40123 typ host\r\n"));
        assert!(a.contains("m=video 40123 UDP/TLS/RTP/SAVPF 96\r\n"));
        assert!(a.contains("m=application 40123 UDP/DTLS/SCTP webrtc-datachannel\r\n"));
        assert!(a.contains("c=IN IP4 203.0.113.9\r\n"));
        assert!(a.contains("a=rtcp:40123 IN IP4 203.0.113.9\r\n"));
        assert_eq!(a.matches("a=candidate:").count(), 1);
        // Everything else is kept, in order, CRLF.
        assert!(a.starts_with("v=0\r\no=str0m-1 1 2 IN IP4 0.0.0.0\r\n"));
        assert!(a.contains("a=ice-pwd:secretpwd\r\na=candidate:1"));
        assert!(
            a.ends_with("\r\n") && !a.contains("\n\n") && !a.replace("\r\n", "").contains('\n')
        );
        // LF-only input comes out CRLF too.
        let lf = rewrite_answer(&ANSWER.replace("\r\n", "\n"), guest(), relay());
        assert_eq!(lf, a);
    }

    #[test]
    fn answers_from_the_guest_are_bounded() {
        check_answer(ANSWER).unwrap();
        let many: String = (0..=MAX_ANSWER_CANDIDATES)
            .map(|i| format!("a=candidate:{i} 1 udp 1 169.254.0.22 7071 typ host\r\n"))
            .collect();
        let e = check_answer(&format!("{ANSWER}{many}")).unwrap_err();
        assert!(e.contains("candidates, more than 16"), "{e}");
        let e =
            check_answer(&format!("{ANSWER}a=x:{}\r\n", "y".repeat(MAX_ANSWER_BYTES))).unwrap_err();
        assert!(e.contains("more than 65536"), "{e}");
        let long = format!(
            "a=candidate:1 1 udp 1 169.254.0.22 7071 typ host {}\r\n",
            "z".repeat(2000)
        );
        assert!(check_answer(&format!("{ANSWER}{long}")).is_err());
        assert!(check_answer("hello").is_err());
        assert!(check_answer("v=0\r\na=x\u{7}\r\n").is_err());
        let e = check_answer(&format!(
            "{ANSWER}a=x\ra=candidate:9 1 udp 1 10.0.0.1 1 typ host\r\n"
        ))
        .unwrap_err();
        assert!(e.contains("carriage return"), "{e}");
        check_answer(&ANSWER.replace("\r\n", "\n")).unwrap();
    }

    #[test]
    fn ufrag_and_offer_checks() {
        assert_eq!(ice_ufrag(ANSWER).as_deref(), Some("gUeS"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
        assert!(
            check_offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n")
                .is_ok()
        );
        assert!(check_offer("hello").is_err());
        assert!(check_offer("v=0\r\n").is_err());
        assert!(check_offer("v=0\r\nm=video\u{0}").is_err());
        assert!(check_offer(&format!("v=0\r\nm=x\r\n{}", "a".repeat(40_000))).is_err());
    }

    // Properties over arbitrary and candidate-like text (see `crate::fuzz`).

    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A field of a candidate line: mostly what real ones hold, sometimes
    /// anything.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "169.254.0.22",
                "7071",
                "udp",
                "UDP",
                "tcp",
                "typ",
                "host",
                "srflx",
                "raddr",
                "rport",
                "generation",
                "0",
                "10.0.2.15",
                "::1",
                "::ffff:169.254.0.22",
                "candidate:1",
                "candidate:169.254.0.22",
                "169.254.0.22:7071",
            ])
            .prop_map(str::to_string),
            any::<u16>().prop_map(|n| n.to_string()),
            any::<std::net::IpAddr>().prop_map(|a| a.to_string()),
            "[!-~]{1,12}",
            any::<String>(),
        ]
    }

    /// Candidate-like lines: the streamer's own host candidate with each
    /// field sometimes replaced, extensions after it, any ASCII whitespace
    /// between the fields.
    pub(crate) fn candidate_line(prefix: &'static str) -> impl Strategy<Value = String> {
        let field = |real: &'static str| prop_oneof![3 => Just(real.to_string()), 1 => token()];
        let sep = prop::sample::select(vec![" ", "  ", "\t", " \t"]);
        (
            (field("1"), field("1"), field("udp"), field("2130706175")),
            (
                field("169.254.0.22"),
                field("7071"),
                field("typ"),
                field("host"),
            ),
            vec(token(), 0..4),
            vec(sep, 11),
        )
            .prop_map(move |((a, b, c, d), (e, f, g, h), extra, seps)| {
                let mut line = format!("{prefix}{a}");
                for (field, sep) in [b, c, d, e, f, g, h].into_iter().chain(extra).zip(seps) {
                    line.push_str(sep);
                    line.push_str(&field);
                }
                line
            })
    }

    /// Where a rewritten answer may send the viewer: any address but the
    /// guest's (written without the guest's address in it).
    pub(crate) fn relay_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![Just(relay()), any::<SocketAddr>()]
            .prop_filter("the relay is not the guest", |a| {
                !a.ip().to_string().contains(&guest().ip().to_string())
            })
    }

    /// A candidate that came out of [`rewrite_candidate`]: it parses as a UDP
    /// candidate naming `to`, and no field names the guest's address.
    pub(crate) fn check_rewritten(c: &str, to: SocketAddr) -> Result<(), TestCaseError> {
        let f: Vec<&str> = c.split_ascii_whitespace().collect();
        prop_assert!(
            f.len() >= 8 && f[0].contains("candidate:") && f[6] == "typ",
            "{c}"
        );
        prop_assert!(f[2].eq_ignore_ascii_case("udp"), "{c}");
        prop_assert_eq!(
            f[4].parse::<std::net::IpAddr>().ok(),
            Some(to.ip()),
            "{}",
            c
        );
        prop_assert_eq!(f[5].parse::<u16>().ok(), Some(to.port()), "{}", c);
        prop_assert_eq!(f.join(" "), c, "one space between fields");
        let guest_ip = guest().ip().to_string();
        for (i, x) in f.iter().enumerate() {
            prop_assert!(
                i == 4 || !x.contains(&guest_ip),
                "field {} names the guest: {}",
                i,
                c
            );
        }
        Ok(())
    }

    /// A rewritten answer: CRLF lines, no empty line, and every candidate
    /// line rewritten to `to` by [`rewrite_candidate`].
    pub(crate) fn check_rewritten_answer(sdp: &str, to: SocketAddr) -> Result<(), TestCaseError> {
        prop_assert!(sdp.is_empty() || sdp.ends_with("\r\n"), "{sdp:?}");
        prop_assert!(!sdp.replace("\r\n", "").contains('\n'), "{sdp:?}");
        for line in sdp.split_terminator("\r\n") {
            prop_assert!(!line.is_empty(), "{sdp:?}");
            if line.starts_with("a=candidate:") {
                check_rewritten(line, to)?;
            }
            prop_assert!(line != format!("c=IN IP4 {}", guest().ip()), "{sdp:?}");
        }
        Ok(())
    }

    /// SDP-like text: lines an answer holds, candidate lines and anything,
    /// ended by CRLF or LF.
    pub(crate) fn answer_text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            candidate_line("a=candidate:"),
            prop::sample::select(vec![
                "v=0",
                "c=IN IP4 169.254.0.22",
                "c=IN IP6 169.254.0.22",
                "m=video 7071 UDP/TLS/RTP/SAVPF 96",
                "m=",
                "a=rtcp:7071 IN IP4 169.254.0.22",
                "a=rtcp:7071",
                "a=ice-ufrag:gUeS",
                "a=ice-ufrag:",
                "a=end-of-candidates",
                "",
            ])
            .prop_map(str::to_string),
            any::<String>(),
        ];
        (vec(line, 0..12), prop::sample::select(vec!["\r\n", "\n"]))
            .prop_map(|(lines, eol)| lines.join(eol))
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2048))]

        /// Any text as a candidate: no panic; a rewritten one parses back,
        /// names the relay and not the guest.
        #[test]
        fn rewritten_candidates_name_only_the_relay(
            cand in prop_oneof![
                candidate_line("candidate:"),
                candidate_line("a=candidate:"),
                any::<String>(),
            ],
            to in relay_addr(),
        ) {
            if let Some(c) = rewrite_candidate(&cand, guest(), to) {
                check_rewritten(&c, to)?;
            }
        }

        /// Any text as an answer: no panic, and the rewritten one keeps only
        /// candidates naming the relay, never more than it was given.
        #[test]
        fn rewritten_answers_name_only_the_relay(sdp in answer_text(), to in relay_addr()) {
            let out = rewrite_answer(&sdp, guest(), to);
            check_rewritten_answer(&out, to)?;
            let count = |s: &str| s.lines().filter(|l| l.starts_with("a=candidate:")).count();
            prop_assert!(count(&out) <= count(&sdp));
            let _ = ice_ufrag(&sdp);
        }

        /// Any text through the answer and offer checks: no panic, and what
        /// they accept is within their bounds.
        #[test]
        fn checks_hold_what_they_promise(
            sdp in prop_oneof![
                answer_text(),
                answer_text().prop_map(|s| format!("v=0\r\n{s}")),
                any::<String>(),
            ],
        ) {
            let printable = |s: &str| {
                !s.chars().any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'))
            };
            if check_answer(&sdp).is_ok() {
                prop_assert!(sdp.len() <= MAX_ANSWER_BYTES && printable(&sdp));
                prop_assert!(sdp.trim_start().starts_with("v=0"));
                let cands: Vec<&str> =
                    sdp.lines().filter(|l| l.starts_with("a=candidate:")).collect();
                prop_assert!(cands.len() <= MAX_ANSWER_CANDIDATES);
                prop_assert!(cands.iter().all(|c| c.len() <= MAX_CANDIDATE_BYTES));
            }
            if check_offer(&sdp).is_ok() {
                prop_assert!(sdp.len() <= 32 * 1024 && printable(&sdp));
                prop_assert!(sdp.trim_start().starts_with("v=0") && sdp.contains("m="));
            }
        }
    }
}
