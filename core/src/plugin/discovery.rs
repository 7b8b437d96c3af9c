//! Finding plugin libraries: in the directories of `LSD_PLUGIN_PATH`, next
//! to the executable, in an installation's `<prefix>/lib/lsd-tui/plugins`,
//! in the user's plugin folder (`$XDG_DATA_HOME/lsd-tui/plugins`, by
//! default `~/.local/share/lsd-tui/plugins`, where `lsd-tui plugins install`
//! puts them), and at paths a recipe names; listing them with their
//! fingerprints and parameters, and checking one library.
//!
//! Only files named `<prefix>lsd_plugin_*<suffix>` (`liblsd_plugin_clip.so`,
//! `lsd_plugin_clip.dll`: a cargo package `lsd-plugin-clip`) are picked up
//! from directories, because opening a library runs its code and a directory
//! such as the one of the executable holds other libraries too. An explicit
//! path may have any name.
//!
//! A plugin is code: loading one runs it with the user's rights. Libraries
//! are therefore only ever looked for in the directories the user chose
//! (`LSD_PLUGIN_PATH`, the installation's, their own), never in a recipe's folder; a
//! recipe that wants a library of its own names it by path, and that one
//! file is all that is loaded.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::host::{Fingerprint, PluginLibrary};
use crate::{Error, Result};
use lsd_plugin_api::{EditBatch, FeatureMaps, InitContext, PluginInfo, TermOutput};

/// The environment variable with extra plugin directories, separated like
/// `PATH` (`:` on Unix, `;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "LSD_PLUGIN_PATH";

/// The file-name stem every discoverable plugin library starts with.
pub const FILE_STEM_PREFIX: &str = "lsd_plugin_";

/// The directories searched for plugins, in priority order: the entries of
/// `LSD_PLUGIN_PATH`, the directory of the running executable, the
/// installation's `<prefix>/lib/lsd-tui/plugins` beside its `bin/`, then
/// [`user_plugin_dir`]. The binary's own plugins come before the user's, so
/// that an older installed copy never shadows the ones built with it.
pub fn search_dirs() -> Vec<PathBuf> {
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let mut dirs = search_dirs_from(std::env::var_os(PLUGIN_PATH_VAR), exe_dir);
    if let Some(user) = user_plugin_dir() {
        if !dirs.contains(&user) {
            dirs.push(user);
        }
    }
    dirs
}

/// The folder of an installation's plugins, relative to its `bin/`.
pub const INSTALLED_PLUGIN_DIR: &str = "lib/lsd-tui/plugins";

/// The user's plugin folder: `$XDG_DATA_HOME/lsd-tui/plugins`, or
/// `~/.local/share/lsd-tui/plugins` when that is unset or relative (the
/// XDG base directory rule); `None` without a home folder.
pub fn user_plugin_dir() -> Option<PathBuf> {
    user_plugin_dir_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

/// [`user_plugin_dir`] from explicit values, so it can be tested.
pub fn user_plugin_dir_from(data_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let data = match data_home.map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        _ => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local/share"),
    };
    Some(data.join("lsd-tui").join("plugins"))
}

/// [`search_dirs`] from explicit values (no environment access), so it can
/// be tested. Empty entries are skipped; duplicates keep their first place.
pub fn search_dirs_from(plugin_path: Option<OsString>, exe_dir: Option<PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = plugin_path
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Some(exe) = exe_dir {
        // `<prefix>/bin/lsd-tui` finds `<prefix>/lib/lsd-tui/plugins`.
        let installed = exe.parent().map(|prefix| prefix.join(INSTALLED_PLUGIN_DIR)).filter(|d| d.is_dir());
        dirs.push(exe);
        dirs.extend(installed);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let fresh = !seen.contains(d);
        seen.push(d.clone());
        fresh
    });
    dirs
}

/// Whether a file name follows the plugin naming convention.
pub fn is_plugin_file_name(name: &str) -> bool {
    name.strip_prefix(DLL_PREFIX)
        .and_then(|n| n.strip_suffix(DLL_SUFFIX))
        .is_some_and(|stem| stem.starts_with(FILE_STEM_PREFIX) && stem.len() > FILE_STEM_PREFIX.len())
}

/// The plugin library files in `dirs`, in directory order, then by name.
/// Missing or unreadable directories are skipped.
pub fn candidate_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_plugin_file_name))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// One library found by [`list`].
#[derive(Debug)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// What opening it gave: its description and fingerprint, or why it
    /// cannot be used (mismatch, not a plugin, …).
    pub status: Result<Listed>,
    /// Set when an earlier library already declared the same name; recipes
    /// naming it get that one.
    pub shadowed_by: Option<PathBuf>,
}

/// A usable plugin, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// Name, version, description and parameters.
    pub info: PluginInfo,
    /// What it was built with (equal to the host's).
    pub fingerprint: Fingerprint,
}

/// Opens every plugin file in `dirs` and reports each one. Broken files are
/// listed with their error; nothing here fails as a whole.
pub fn list(dirs: &[PathBuf]) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for path in candidate_files(dirs) {
        let status = PluginLibrary::open(&path)
            .map(|lib| Listed { info: lib.info().clone(), fingerprint: lib.fingerprint().clone() });
        let shadowed_by = status.as_ref().ok().and_then(|l| {
            found.iter().find_map(|f| match &f.status {
                Ok(o) if o.info.name == l.info.name && f.shadowed_by.is_none() => Some(f.path.clone()),
                _ => None,
            })
        });
        found.push(Found { path, status, shadowed_by });
    }
    found
}

/// Finds the plugin a recipe names. `name_or_path` is a path when it
/// contains a path separator or ends with the platform's library suffix
/// (only that file is loaded); otherwise it is a declared plugin name,
/// looked up in `extra_dirs` and then in [`search_dirs`]. Pass only
/// directories the user trusts: a recipe's own folder is not one of them
/// (see the module docs).
pub fn resolve(name_or_path: &str, extra_dirs: &[PathBuf]) -> Result<PluginLibrary> {
    let mut dirs = extra_dirs.to_vec();
    dirs.extend(search_dirs());
    resolve_in(name_or_path, &dirs)
}

/// The file a plugin named `name` has by convention: package
/// `lsd-plugin-<name>`, library `<prefix>lsd_plugin_<name with _ for ->`.
pub fn conventional_file_name(name: &str) -> String {
    format!("{DLL_PREFIX}{FILE_STEM_PREFIX}{}{DLL_SUFFIX}", name.replace('-', "_"))
}

/// [`resolve`] over an explicit list of directories. A name is looked for
/// first as its [`conventional_file_name`] in each directory, so that a
/// recipe loads the one library it names; only when no such file declares
/// that name are the other plugin files of the directories opened.
pub fn resolve_in(name_or_path: &str, dirs: &[PathBuf]) -> Result<PluginLibrary> {
    let looks_like_path = name_or_path.contains(std::path::is_separator) || name_or_path.ends_with(DLL_SUFFIX);
    if looks_like_path {
        return PluginLibrary::open(name_or_path);
    }
    let mut problems = Vec::new();
    let conventional = conventional_file_name(name_or_path);
    let mut tried = Vec::new();
    for dir in dirs {
        let path = dir.join(&conventional);
        if !path.is_file() {
            continue;
        }
        match PluginLibrary::open(&path) {
            Ok(lib) if lib.info().name == name_or_path => return Ok(lib),
            Ok(_) => {}
            Err(e) => problems.push(format!("  {}: {e}", path.display())),
        }
        tried.push(path);
    }
    for path in candidate_files(dirs) {
        if tried.contains(&path) {
            continue;
        }
        match PluginLibrary::open(&path) {
            Ok(lib) if lib.info().name == name_or_path => return Ok(lib),
            Ok(_) => {}
            Err(e) => problems.push(format!("  {}: {e}", path.display())),
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut reason = format!(
        "no plugin named '{name_or_path}' in {}; add its directory to {PLUGIN_PATH_VAR} or give its path",
        if searched.is_empty() { "(no directories)".into() } else { searched.join(", ") }
    );
    if !problems.is_empty() {
        reason.push_str("\nlibraries that could not be opened:\n");
        reason.push_str(&problems.join("\n"));
    }
    Err(Error::Config(reason))
}

/// The outcome of [`check`].
#[derive(Debug)]
pub struct CheckReport {
    /// The library's description and fingerprint.
    pub listed: Listed,
    /// The loss value of the smoke test (default parameters, demo weights,
    /// a tiny random batch on the CPU).
    pub smoke_value: f64,
    /// Which gradients the smoke test returned (`x_edit`, `w`, `u`,
    /// `features`).
    pub smoke_gradients: Vec<String>,
    /// When checked on another device too: that device's agreement with
    /// the CPU run.
    pub parity: Option<DeviceParity>,
}

/// How a plugin's value and gradients on a device compare with the CPU.
#[derive(Debug, Clone)]
pub struct DeviceParity {
    /// The device (`cuda:0`).
    pub device: String,
    /// `|value_device − value_cpu|`.
    pub value_diff: f64,
    /// Max abs difference over every gradient entry.
    pub grad_diff: f64,
    /// Max abs value over the CPU gradients (the scale of `grad_diff`).
    pub grad_scale: f64,
}

/// Validates one library: opens it (fingerprint check), reads its
/// parameters, builds a term with default parameters and demo weights on
/// the CPU and evaluates it on a tiny random batch, checking that the value
/// is finite and the gradients have the inputs' shapes and are finite.
pub fn check(path: &Path) -> Result<CheckReport> {
    check_on(path, "cpu")
}

/// [`check`], and when `device` is not the CPU, the same smoke test with the
/// plugin computing on `device`, compared with the CPU run
/// ([`CheckReport::parity`]).
pub fn check_on(path: &Path, device: &str) -> Result<CheckReport> {
    let lib = PluginLibrary::open(path)?;
    let term = lib.instantiate("", &InitContext::default())?;
    let batch = smoke_batch(term.needs().features)?;
    let out = term.evaluate(&batch)?;
    let parity = if device == "cpu" {
        None
    } else {
        let ctx = InitContext { device: device.to_string(), ..InitContext::default() };
        let on_device = lib.instantiate("", &ctx)?.evaluate(&batch)?;
        Some(parity(device, &out, &on_device)?)
    };
    let fail =
        |reason: String| Error::PluginCall { plugin: lib.info().name.clone(), call: "loss", reason, panicked: false };
    let value = out.value_f64()?;
    if !value.is_finite() {
        return Err(fail(format!("smoke test: the loss is {value}")));
    }
    let mut names = Vec::new();
    let mut grads: Vec<(&str, &Option<Tensor>)> =
        vec![("x_edit", &out.grad_x_edit), ("w", &out.grad_w), ("u", &out.grad_u)];
    grads.extend(out.grad_features_edit.iter().map(|g| ("features", g)));
    for (name, g) in grads {
        if let Some(g) = g {
            let sum = g.abs()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !sum.is_finite() {
                return Err(fail(format!("smoke test: the gradient of {name} is not finite")));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(CheckReport {
        listed: Listed { info: lib.info().clone(), fingerprint: lib.fingerprint().clone() },
        smoke_value: value,
        smoke_gradients: names,
        parity,
    })
}

fn gradients(out: &TermOutput) -> Vec<&Option<Tensor>> {
    let mut g = vec![&out.grad_x_edit, &out.grad_w, &out.grad_u];
    g.extend(out.grad_features_edit.iter());
    g
}

fn parity(device: &str, cpu: &TermOutput, other: &TermOutput) -> Result<DeviceParity> {
    let mut grad_diff = 0f64;
    let mut grad_scale = 0f64;
    for (a, b) in gradients(cpu).into_iter().zip(gradients(other)) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let b = b.to_device(a.device())?;
                let max = |t: &Tensor| -> Result<f64> {
                    Ok(t.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
                };
                grad_diff = grad_diff.max(max(&(a - &b)?)?);
                grad_scale = grad_scale.max(max(a)?);
            }
            (None, None) => {}
            _ => grad_diff = f64::INFINITY,
        }
    }
    let value_diff = (cpu.value_f64()? - other.value_f64()?).abs();
    Ok(DeviceParity { device: device.to_string(), value_diff, grad_diff, grad_scale })
}

/// A tiny deterministic batch: 2 samples of 3×16×16, W+ of 4×8, one
/// direction, and (if asked) two feature maps.
fn smoke_batch(features: bool) -> Result<EditBatch> {
    let dev = Device::Cpu;
    let wave = |shape: &[usize], phase: f64| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (0.37 * i as f64 + phase).sin() as f32 * 0.8).collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let mut batch = EditBatch::new(
        wave(&[2, 3, 16, 16], 0.0)?,
        wave(&[2, 3, 16, 16], 0.5)?,
        wave(&[2, 4, 8], 1.0)?,
        wave(&[1, 4, 8], 2.0)?,
        vec![1.0, -1.0],
        "a photo of a person with gray hair",
    )?;
    if features {
        batch.features = Some(FeatureMaps {
            x: vec![wave(&[2, 8, 4, 4], 3.0)?, wave(&[2, 4, 8, 8], 4.0)?],
            x_edit: vec![wave(&[2, 8, 4, 4], 3.5)?, wave(&[2, 4, 8, 8], 4.5)?],
        });
    }
    Ok(batch)
}

/// Copies a checked plugin library into `dir` (created if needed), under
/// its own file name, atomically; returns the installed path.
///
/// The library is opened and run once first ([`check`]): a file that is
/// not a plugin of this build is refused before anything is copied. Its
/// name must follow the naming convention, or it would never be found.
pub fn install(path: &Path, dir: &Path) -> Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !is_plugin_file_name(&name) {
        return Err(Error::PluginLoad {
            path: path.to_path_buf(),
            reason: format!(
                "a plugin library is found only when its file is named {DLL_PREFIX}{FILE_STEM_PREFIX}<name>{DLL_SUFFIX}; rename it (a cargo package 'lsd-plugin-<name>' builds that name)"
            ),
        });
    }
    check(path)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating folder", dir, e))?;
    let to = dir.join(&name);
    crate::durable::write_with(&to, |tmp| {
        std::fs::copy(path, tmp).map(|_| ()).map_err(|e| format!("copying '{}': {e}", path.display()))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting the mode of", &to, e))?;
    }
    Ok(to)
}
