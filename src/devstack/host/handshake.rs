//! The go-plugin stdout handshake line, parsed the way the Nomad client's
//! go-plugin host parses it (protocol doc §1.4).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// go-plugin's own core protocol version; the first part of the line must be it.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// The only plugin protocol a Nomad host allows.
pub const PROTOCOL_GRPC: &str = "grpc";

/// What the host assumes when the line has no protocol part.
pub const PROTOCOL_NETRPC: &str = "netrpc";

/// A server-certificate part only counts as a certificate above this length;
/// Go servers print an empty part.
const SERVER_CERT_MIN_LEN: usize = 50;

/// Where the plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginAddress {
    /// `unix|<path>`: a Unix-domain socket.
    Unix(PathBuf),
    /// `tcp|<ip>:<port>`: a TCP listener (Windows plugins use it).
    Tcp(SocketAddr),
}

impl fmt::Display for PluginAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// A handshake line the host accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Part 1, always [`CORE_PROTOCOL_VERSION`] once accepted.
    pub core_version: u32,
    /// Part 2, the negotiated app protocol version (one of those offered).
    pub app_version: u32,
    /// Parts 3 and 4.
    pub address: PluginAddress,
    /// Part 5, always [`PROTOCOL_GRPC`] once accepted.
    pub protocol: String,
}

/// Why the host rejected a handshake line. The messages follow go-plugin's
/// wording where it has one, so failures read like a Nomad agent log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Fewer than four `|`-separated parts.
    #[error(
        "unrecognized remote plugin message {line:?}: expected at least 4 '|'-separated parts, got {parts}"
    )]
    TooFewParts {
        /// The trimmed line.
        line: String,
        /// How many parts it had.
        parts: usize,
    },
    /// Part 1 is not go-plugin's core protocol version.
    #[error(
        "incompatible core API version with plugin: plugin version {got:?}, core version {CORE_PROTOCOL_VERSION}"
    )]
    IncompatibleCoreVersion {
        /// Part 1 as printed.
        got: String,
    },
    /// Part 2 is not one of the versions offered in `PLUGIN_PROTOCOL_VERSIONS`.
    #[error(
        "incompatible API version with plugin: plugin version {got:?}, offered versions {offered:?}"
    )]
    IncompatibleApiVersion {
        /// Part 2 as printed.
        got: String,
        /// The versions the host offered.
        offered: Vec<u32>,
    },
    /// Part 3 is neither `unix` nor `tcp`.
    #[error("unknown address type {network:?}: expected \"unix\" or \"tcp\"")]
    UnknownNetwork {
        /// Part 3 as printed.
        network: String,
    },
    /// Part 4 does not parse for the network of part 3.
    #[error("invalid {network} address {address:?}: expected an <ip>:<port> socket address")]
    InvalidAddress {
        /// Part 3.
        network: String,
        /// Part 4 as printed.
        address: String,
    },
    /// Part 5 is not `grpc` (a missing part 5 means `netrpc`).
    #[error("unsupported plugin protocol {protocol:?}: the Nomad host only allows \"grpc\"")]
    UnsupportedProtocol {
        /// Part 5, or `netrpc` when it is missing.
        protocol: String,
    },
    /// Part 6 carries a certificate: the plugin expects AutoMTLS, which a
    /// Nomad host never enables.
    #[error("plugin printed a TLS server certificate, but Nomad hosts never use AutoMTLS")]
    UnexpectedServerCert,
}

/// Parses a `PLUGIN_PROTOCOL_VERSIONS` value (comma-separated integers) into
/// the versions a host accepts. Parts that are not integers are skipped, so a
/// deliberately malformed value offers nothing.
#[must_use]
pub fn parse_offered_versions(value: &str) -> Vec<u32> {
    value
        .split(',')
        .filter_map(|part| parse_go_int(part.trim()))
        .collect()
}

/// Parses the plugin's first stdout line as go-plugin does: trim whitespace,
/// split on `|`, require at least four parts, then check in order the core
/// version, the app version (against `offered`), the network and address,
/// and the protocol (missing means `netrpc`, which is rejected).
///
/// A sixth part up to 50 characters (Go servers print an empty one) and a
/// seventh (multiplexing flag) are ignored, as the host ignores them.
///
/// # Errors
///
/// [`HandshakeError`] naming the first part the host would reject.
pub fn parse_handshake_line(line: &str, offered: &[u32]) -> Result<Handshake, HandshakeError> {
    let line = line.trim();
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() < 4 {
        return Err(HandshakeError::TooFewParts {
            line: line.to_owned(),
            parts: parts.len(),
        });
    }

    let core_version = parse_go_int(parts[0])
        .filter(|v| *v == CORE_PROTOCOL_VERSION)
        .ok_or_else(|| HandshakeError::IncompatibleCoreVersion {
            got: parts[0].to_owned(),
        })?;

    let app_version = parse_go_int(parts[1])
        .filter(|v| offered.contains(v))
        .ok_or_else(|| HandshakeError::IncompatibleApiVersion {
            got: parts[1].to_owned(),
            offered: offered.to_vec(),
        })?;

    let address = match parts[2] {
        "unix" => PluginAddress::Unix(PathBuf::from(parts[3])),
        "tcp" => parts[3].parse().map(PluginAddress::Tcp).map_err(|_| {
            HandshakeError::InvalidAddress {
                network: parts[2].to_owned(),
                address: parts[3].to_owned(),
            }
        })?,
        other => {
            return Err(HandshakeError::UnknownNetwork {
                network: other.to_owned(),
            });
        }
    };

    let protocol = parts.get(4).copied().unwrap_or(PROTOCOL_NETRPC);
    if protocol != PROTOCOL_GRPC {
        return Err(HandshakeError::UnsupportedProtocol {
            protocol: protocol.to_owned(),
        });
    }

    if parts
        .get(5)
        .is_some_and(|cert| cert.len() > SERVER_CERT_MIN_LEN)
    {
        return Err(HandshakeError::UnexpectedServerCert);
    }

    Ok(Handshake {
        core_version,
        app_version,
        address,
        protocol: protocol.to_owned(),
    })
}

/// Go's `strconv.Atoi` accepts an optional sign; parse through `i64` so `+1`
/// is accepted and `-1` is a clean mismatch rather than a parse quirk.
fn parse_go_int(text: &str) -> Option<u32> {
    text.parse::<i64>().ok().and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOMAD_OFFER: &[u32] = &[2];

    #[test]
    fn go_style_line_with_empty_cert_part_is_accepted() {
        let hs = parse_handshake_line("1|2|unix|/tmp/plugin123|grpc|\n", NOMAD_OFFER).unwrap();
        assert_eq!(hs.core_version, 1);
        assert_eq!(hs.app_version, 2);
        assert_eq!(hs.address, PluginAddress::Unix("/tmp/plugin123".into()));
        assert_eq!(hs.protocol, "grpc");
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let hs = parse_handshake_line("  1|2|unix|/tmp/p|grpc\r\n", NOMAD_OFFER).unwrap();
        assert_eq!(hs.address, PluginAddress::Unix("/tmp/p".into()));
    }

    #[test]
    fn wrong_core_version_is_incompatible_core_api() {
        let err = parse_handshake_line("2|2|unix|/tmp/p|grpc|", NOMAD_OFFER).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::IncompatibleCoreVersion { got: "2".into() }
        );
        assert!(err.to_string().contains("incompatible core API version"));
    }

    #[test]
    fn non_numeric_core_version_is_incompatible_core_api() {
        let err = parse_handshake_line("one|2|unix|/tmp/p|grpc", NOMAD_OFFER).unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::IncompatibleCoreVersion { .. }
        ));
    }

    #[test]
    fn app_version_not_offered_is_incompatible_api() {
        let err = parse_handshake_line("1|1|unix|/tmp/p|grpc|", NOMAD_OFFER).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::IncompatibleApiVersion {
                got: "1".into(),
                offered: vec![2],
            }
        );
    }

    #[test]
    fn app_version_is_checked_against_every_offered_version() {
        let offered = parse_offered_versions("1, 3");
        assert_eq!(offered, vec![1, 3]);
        let hs = parse_handshake_line("1|3|unix|/tmp/p|grpc", &offered).unwrap();
        assert_eq!(hs.app_version, 3);
        assert!(parse_handshake_line("1|2|unix|/tmp/p|grpc", &offered).is_err());
    }

    #[test]
    fn malformed_offer_accepts_no_version() {
        assert!(parse_offered_versions("abc").is_empty());
        assert!(parse_offered_versions("").is_empty());
        let err =
            parse_handshake_line("1|2|unix|/tmp/p|grpc", &parse_offered_versions("")).unwrap_err();
        assert!(matches!(err, HandshakeError::IncompatibleApiVersion { .. }));
    }

    #[test]
    fn tcp_form_gives_a_socket_address() {
        let hs = parse_handshake_line("1|2|tcp|127.0.0.1:10000|grpc|", NOMAD_OFFER).unwrap();
        assert_eq!(
            hs.address,
            PluginAddress::Tcp("127.0.0.1:10000".parse().unwrap())
        );
    }

    #[test]
    fn tcp_form_without_port_is_an_invalid_address() {
        let err = parse_handshake_line("1|2|tcp|127.0.0.1|grpc", NOMAD_OFFER).unwrap_err();
        assert!(matches!(err, HandshakeError::InvalidAddress { .. }));
    }

    #[test]
    fn unknown_network_is_rejected() {
        let err = parse_handshake_line("1|2|udp|/tmp/p|grpc", NOMAD_OFFER).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnknownNetwork {
                network: "udp".into()
            }
        );
    }

    #[test]
    fn missing_protocol_means_netrpc_and_is_rejected() {
        let err = parse_handshake_line("1|2|unix|/tmp/plugin123", NOMAD_OFFER).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnsupportedProtocol {
                protocol: "netrpc".into()
            }
        );
    }

    #[test]
    fn explicit_netrpc_is_rejected() {
        let err = parse_handshake_line("1|2|unix|/tmp/p|netrpc|", NOMAD_OFFER).unwrap_err();
        assert!(matches!(err, HandshakeError::UnsupportedProtocol { .. }));
    }

    #[test]
    fn too_few_parts_is_unrecognized() {
        let err = parse_handshake_line("1|2|unix", NOMAD_OFFER).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::TooFewParts {
                line: "1|2|unix".into(),
                parts: 3
            }
        );
        assert!(matches!(
            parse_handshake_line("", NOMAD_OFFER),
            Err(HandshakeError::TooFewParts { parts: 1, .. })
        ));
    }

    #[test]
    fn log_text_printed_before_the_handshake_is_unrecognized() {
        let err = parse_handshake_line("starting plugin...", NOMAD_OFFER).unwrap_err();
        assert!(matches!(err, HandshakeError::TooFewParts { .. }));
    }

    #[test]
    fn long_server_certificate_part_is_rejected() {
        let line = format!("1|2|unix|/tmp/p|grpc|{}", "A".repeat(64));
        assert_eq!(
            parse_handshake_line(&line, NOMAD_OFFER).unwrap_err(),
            HandshakeError::UnexpectedServerCert
        );
    }

    #[test]
    fn multiplex_part_is_ignored() {
        assert!(parse_handshake_line("1|2|unix|/tmp/p|grpc||true", NOMAD_OFFER).is_ok());
    }
}
