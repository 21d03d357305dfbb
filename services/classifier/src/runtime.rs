//! Loading ONNX Runtime's shared library (ort's `load-dynamic`) once per process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context};
use ort::environment::Environment;

/// The library file name in the PyPI wheel `onnxruntime==1.31.1`, the ABI ort 2.0.0-rc.15 targets.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// Where `make ort` installs it, relative to the workspace root.
const WORKSPACE_DIR: &str = ".ort";

/// Where a workspace's `.ort/` may be, found at run time (no build machine's path is compiled
/// in): the working directory (make runs from the workspace root), the workspace of the crate
/// `cargo test` runs, and the folders above the executable (`target/release/`, `.../deps/`).
fn workspace_candidates() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR") {
        roots.push(PathBuf::from(manifest).join("../.."));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots
        .into_iter()
        .map(|root| root.join(WORKSPACE_DIR).join(LIBRARY_FILE))
        .collect()
}

/// Finds the library: `ORT_DYLIB_PATH`, else the configured path, else next to the executable
/// (how packaged installs ship it), else the copy `make ort` installed in the workspace.
pub fn library_path(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ORT_DYLIB_PATH={} is not a file", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = configured {
        if !p.is_file() {
            bail!("configured ONNX Runtime library {} is not a file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIBRARY_FILE));
    }
    candidates.extend(workspace_candidates());
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "ONNX Runtime library {LIBRARY_FILE} not found (looked next to the executable and in the \
             workspace's {WORKSPACE_DIR}/); run `make ort` or set ORT_DYLIB_PATH"
        )
    })
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime environment (ort allows exactly one), loading the library on
/// first use.
pub fn environment(configured: Option<&Path>) -> anyhow::Result<&'static Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    // ort refuses a second environment, so concurrent first callers must not both build one.
    let _init = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = library_path(configured)?;
    let env = ort::init_from(&path)
        .with_context(|| format!("cannot load ONNX Runtime from {}", path.display()))?
        .with_name("imgrec")
        .build()
        .context("cannot create the ONNX Runtime environment")?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}
