//! The go-plugin contract: cookie and version checks, a Unix socket in a
//! private directory, the handshake line, the plugin-internal gRPC services
//! (health, controller, stdio, broker) next to ours, SIGINT ignored, and a
//! clean exit on `GRPCController.Shutdown`, SIGTERM, or when the host is gone.

pub mod connection;
pub mod handshake;
pub mod services;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::driver::Driver;
use crate::proto::base::base_plugin_server::BasePluginServer;
use crate::proto::drivers::driver_server::DriverServer;
use crate::proto::plugin::grpc_broker_server::GrpcBrokerServer;
use crate::proto::plugin::grpc_controller_server::GrpcControllerServer;
use crate::proto::plugin::grpc_stdio_server::GrpcStdioServer;
use crate::rpc::{BaseService, DriverService};
use connection::Connections;

/// Largest message we accept or send. Nomad allows `MaxInt32`; task configs
/// with large environments exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long in-flight RPCs get to finish once shutdown starts. go-plugin
/// SIGKILLs us 2 s after `Shutdown`.
const DRAIN: Duration = Duration::from_millis(800);

/// Run the plugin until told to stop. Returns the process exit code.
///
/// # Errors
/// Failures to create the socket or to serve; handshake refusals are printed
/// and returned as exit code 1 instead.
pub async fn run() -> anyhow::Result<i32> {
    let cookie = std::env::var(handshake::COOKIE_KEY).ok();
    if let Err(e) = handshake::check_cookie(cookie.as_deref()) {
        eprintln!("{e}");
        return Ok(1);
    }
    let versions = std::env::var(handshake::PROTOCOL_VERSIONS_KEY).ok();
    let app_version = match handshake::negotiate_version(versions.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };

    let shutdown = CancellationToken::new();
    ignore_sigint();
    watch_sigterm(shutdown.clone());

    let dir = private_socket_dir().context("creating the plugin socket directory")?;
    let socket = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    if let Ok(group) = std::env::var("PLUGIN_UNIX_SOCKET_GROUP")
        && !group.is_empty()
    {
        share_with_group(dir.path(), &socket, &group)
            .with_context(|| format!("giving group {group} access to {}", socket.display()))?;
    }

    let driver = Arc::new(Driver::new(shutdown.clone()));
    let connections = Connections::default();
    let incoming = connection::incoming(listener, connections.clone());

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    let router = Server::builder()
        .add_service(health)
        .add_service(GrpcControllerServer::new(services::Controller::new(
            shutdown.clone(),
        )))
        .add_service(GrpcStdioServer::new(services::Stdio::new(shutdown.clone())))
        .add_service(GrpcBrokerServer::new(services::Broker::new(
            shutdown.clone(),
        )))
        .add_service(
            BasePluginServer::new(BaseService::new(driver.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            DriverServer::new(DriverService::new(driver.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );

    // The socket is bound and accepting: only now may the host learn of it.
    print_handshake(&handshake::line(app_version, &socket))?;
    tracing::info!(socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "plugin serving");

    tokio::spawn(watch_host(
        shutdown.clone(),
        connections.clone(),
        host_gone_grace(),
    ));

    let stop = shutdown.clone();
    let serve =
        router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    tokio::pin!(serve);
    tokio::select! {
        res = &mut serve => res.context("serving gRPC")?,
        () = shutdown.cancelled() => {
            driver.shutdown().await;
            // Blocking calls such as WaitTask never finish by themselves.
            let _ = tokio::time::timeout(DRAIN, &mut serve).await;
        }
    }
    driver.shutdown().await;
    tracing::info!("plugin exiting");
    drop(dir);
    Ok(0)
}

fn print_handshake(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing the handshake line")?;
    out.flush().context("flushing the handshake line")?;
    Ok(())
}

/// A fresh 0700 directory under `PLUGIN_UNIX_SOCKET_DIR` or the temp dir.
fn private_socket_dir() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("plugin").tempdir_in(base)?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    Ok(dir)
}

/// chown the socket (and its directory) to `group`, socket 0660, dir 0750.
fn share_with_group(dir: &Path, socket: &Path, group: &str) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let gid = match group.parse::<u32>() {
        Ok(g) => g,
        Err(_) => {
            let name = CString::new(group).map_err(std::io::Error::other)?;
            // SAFETY: getgrnam reads a NUL-terminated name; we copy gr_gid at once.
            let gr = unsafe { libc::getgrnam(name.as_ptr()) };
            if gr.is_null() {
                return Err(std::io::Error::other(format!("no such group {group:?}")));
            }
            // SAFETY: gr is non-null and points to a valid group record.
            unsafe { (*gr).gr_gid }
        }
    };
    for (path, mode) in [(dir, 0o750), (socket, 0o660)] {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: c is a valid path; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Go plugins ignore SIGINT for their whole life (an operator's Ctrl-C on the
/// agent must not take the plugin down). Installing a tokio handler replaces
/// the default disposition; we drain it so nothing accumulates.
fn ignore_sigint() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::interrupt()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    tracing::debug!("ignoring SIGINT, as Nomad plugins do");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "could not install the SIGINT handler"),
    }
}

fn watch_sigterm(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                if sig.recv().await.is_some() {
                    tracing::info!("SIGTERM received, shutting down");
                    shutdown.cancel();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "could not install the SIGTERM handler"),
    }
}

/// How long the plugin keeps serving after its host is gone, so that a
/// restarted agent can reattach (`NOMAD_ECS_HOST_GONE_GRACE`, seconds).
fn host_gone_grace() -> Duration {
    std::env::var("NOMAD_ECS_HOST_GONE_GRACE")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(60), Duration::from_secs_f64)
}

/// Exit cleanly when the host is gone: our parent changed (we were
/// reparented) or stderr broke, and no connection has been open for `grace`.
/// A reattaching agent dials the same socket, which keeps us alive.
async fn watch_host(shutdown: CancellationToken, connections: Connections, grace: Duration) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // SAFETY: as above.
        let gone = unsafe { libc::getppid() } != parent || crate::logging::stderr_broken();
        if !gone {
            continue;
        }
        if connections.open() > 0 {
            idle_since = None;
            continue;
        }
        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= grace {
            tracing::info!("the Nomad host is gone and nobody reattached; exiting");
            shutdown.cancel();
            return;
        }
    }
}
