//! nomad-driver-ecs: started by the Nomad client agent from its plugin_dir.

fn main() -> std::process::ExitCode {
    nomad_driver_ecs::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nomad-driver-ecs: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match nomad_driver_ecs::plugin::run().await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "plugin failed");
                1
            }
        }
    });
    // Queued spans and the last metrics, within go-plugin's kill grace.
    runtime.block_on(nomad_driver_ecs::telemetry::shutdown(
        nomad_driver_ecs::telemetry::FLUSH_TIMEOUT,
    ));
    // Background tasks (fingerprint loops, blocked waits) must not delay exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
