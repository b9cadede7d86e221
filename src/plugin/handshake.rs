//! The go-plugin handshake: magic cookie, protocol negotiation, and the one
//! line we print on stdout.

use thiserror::Error;

/// Environment variable carrying Nomad's magic cookie.
pub const COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
/// Nomad's magic cookie value (`base.Handshake` in Nomad).
pub const COOKIE_VALUE: &str = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";
/// Environment variable listing the app protocol versions the host accepts.
pub const PROTOCOL_VERSIONS_KEY: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// Nomad's plugin app protocol version (0.9+ gRPC plugins).
pub const APP_PROTOCOL_VERSION: u32 = 2;

/// Why the plugin refuses to start; printed on stderr before exit 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// No cookie: someone ran the binary by hand.
    #[error(
        "This binary is a plugin for the Nomad client agent and is not meant to be run directly. \
         Put nomad-driver-ecs in the agent's plugin_dir and configure a \
         plugin \"nomad-driver-ecs\" block; Nomad starts it. ({COOKIE_KEY} is not set)"
    )]
    CookieMissing,
    /// A cookie that is not Nomad's.
    #[error(
        "This binary is a Nomad plugin, but {COOKIE_KEY} does not hold Nomad's magic cookie; \
         it is not being launched by a Nomad client agent"
    )]
    CookieMismatch,
    /// The host offers no protocol version we speak.
    #[error(
        "the host offers plugin protocol versions {offered:?} in {PROTOCOL_VERSIONS_KEY}, \
         but this plugin speaks only version {APP_PROTOCOL_VERSION}"
    )]
    NoCommonVersion {
        /// The raw value of the environment variable.
        offered: String,
    },
}

/// Check the magic cookie.
///
/// # Errors
/// [`HandshakeError::CookieMissing`] or [`HandshakeError::CookieMismatch`].
pub fn check_cookie(value: Option<&str>) -> Result<(), HandshakeError> {
    match value {
        None | Some("") => Err(HandshakeError::CookieMissing),
        Some(v) if v == COOKIE_VALUE => Ok(()),
        Some(_) => Err(HandshakeError::CookieMismatch),
    }
}

/// Pick the app protocol version from `PLUGIN_PROTOCOL_VERSIONS`. An unset or
/// empty variable means a host that predates negotiation: go-plugin then uses
/// the handshake's own version, which is ours.
///
/// # Errors
/// [`HandshakeError::NoCommonVersion`] when the list does not contain 2.
pub fn negotiate_version(offered: Option<&str>) -> Result<u32, HandshakeError> {
    let Some(raw) = offered.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(APP_PROTOCOL_VERSION);
    };
    let speaks_ours = raw
        .split(',')
        .filter_map(|v| v.trim().parse::<u32>().ok())
        .any(|v| v == APP_PROTOCOL_VERSION);
    if speaks_ours {
        Ok(APP_PROTOCOL_VERSION)
    } else {
        Err(HandshakeError::NoCommonVersion {
            offered: raw.to_string(),
        })
    }
}

/// The handshake line for a Unix socket: `1|2|unix|<path>|grpc`.
pub fn line(app_version: u32, socket: &std::path::Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{app_version}|unix|{}|grpc",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_cookie_is_accepted() {
        assert_eq!(check_cookie(Some(COOKIE_VALUE)), Ok(()));
    }

    #[test]
    fn a_missing_or_empty_cookie_is_refused_with_a_human_message() {
        assert_eq!(check_cookie(None), Err(HandshakeError::CookieMissing));
        assert_eq!(check_cookie(Some("")), Err(HandshakeError::CookieMissing));
        assert!(
            HandshakeError::CookieMissing
                .to_string()
                .contains("not meant to be run directly")
        );
    }

    #[test]
    fn a_wrong_cookie_is_refused() {
        assert_eq!(
            check_cookie(Some("nope")),
            Err(HandshakeError::CookieMismatch)
        );
    }

    #[test]
    fn version_two_is_chosen_from_a_list_that_offers_it() {
        assert_eq!(negotiate_version(Some("2")), Ok(2));
        assert_eq!(negotiate_version(Some("1, 2,3")), Ok(2));
        assert_eq!(negotiate_version(None), Ok(2));
        assert_eq!(negotiate_version(Some("")), Ok(2));
    }

    #[test]
    fn a_list_without_version_two_is_refused_and_named() {
        let err = negotiate_version(Some("1,3")).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::NoCommonVersion {
                offered: "1,3".into()
            }
        );
        assert!(err.to_string().contains("\"1,3\""));
        assert!(negotiate_version(Some("x")).is_err());
    }

    #[test]
    fn the_handshake_line_has_five_parts() {
        let l = line(2, std::path::Path::new("/tmp/p/plugin.sock"));
        assert_eq!(l, "1|2|unix|/tmp/p/plugin.sock|grpc");
    }
}
