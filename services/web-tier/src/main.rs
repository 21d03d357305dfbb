//! `web-tier`: the HTTP front of the service (and, locally, a host of the scaler). Serves until
//! SIGTERM/SIGINT, then drains; a second signal cuts the drain short.

use std::process::ExitCode;

use imgrec_runtime::settings::Settings;

fn main() -> ExitCode {
    let logs = imgrec_runtime::logging::init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    logs.exit(result.map(|()| ExitCode::SUCCESS))
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let shutdown = imgrec_runtime::shutdown::Shutdown::on_signals()?;
    let listener = web_tier::bind(&settings).await?;
    web_tier::serve(settings, listener, shutdown).await
}
