//! `web-tier`: the HTTP front of the service (and, locally, a host of the scaler). Serves until
//! SIGTERM/SIGINT, then drains; a second signal cuts the drain short.

use std::process::ExitCode;

use imgrec_runtime::settings::Settings;

fn main() -> ExitCode {
    imgrec_runtime::logging::init();
    let result = Settings::load().and_then(|settings| web_tier::runtime(&settings)?.block_on(run(settings)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = imgrec_runtime::shutdown::Shutdown::on_signals()?;
    let listener = web_tier::bind(&settings).await?;
    web_tier::serve(settings, listener, shutdown).await
}
