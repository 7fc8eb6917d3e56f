//! Which project builds a plugin file, and the command that rebuilds it.
//!
//! A route's file is either a Rust cdylib in a cargo target directory
//! (`<target>/wasm32-wasip2/release/ping.wasm`) or the `roost.output` of an
//! npm package built with `roost-js` (`plugins/js/room-chat/dist/room_chat.wasm`).
//! [`Project::find`] asks cargo rather than guessing: `cargo metadata
//! --no-deps` in the workspace that owns the target directory (its parent,
//! as cargo lays it out by default) names the package whose cdylib target is
//! that file; when the target directory is shared or moved
//! (`CARGO_TARGET_DIR`), the dep-info file cargo wrote next to the output
//! (`ping.d`) names the sources, and so the package. For JS, the nearest
//! `package.json` above the file whose `roost.output` is that file.
//!
//! Pure lookups and commands; `dev/mod.rs` watches and schedules, and
//! `dev/build.rs` runs the command.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The variables cargo must not pass from Roost's environment to a guest
/// build: flags meant for a native build (a `cargo run -- dev` sets some of
/// them) would break or slow a `wasm32-wasip2` one. The same list as
/// `host/build.rs` uses for the sample plugins.
const CARGO_ENV_REMOVED: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_PROFILE_RELEASE_DEBUG",
    "CARGO_BUILD_TARGET_DIR",
];

/// A plugin file and the project whose build writes it.
#[derive(Debug, Clone)]
pub struct Project {
    /// The file the build writes: a route's plugin file.
    pub output: PathBuf,
    /// For logs and the build output's prefix: the file's stem (`room_chat`).
    pub plugin: String,
    /// The directory whose files are the sources (the package's).
    pub root: PathBuf,
    /// Directories under `root` that hold no sources: build outputs and
    /// installed packages. Changes there never start a build.
    pub excluded: Vec<PathBuf>,
    pub kind: Kind,
}

/// How the project builds.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `cargo build --target <triple> <profile> -p <package>` in `workspace`.
    Rust {
        workspace: PathBuf,
        package: String,
        target_dir: PathBuf,
        triple: String,
        /// The cargo profile whose output directory the file is in.
        profile: String,
    },
    /// `node <bin> build` in the package's directory (`root`).
    Js { bin: PathBuf },
}

/// How a Rust build is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustBuild {
    /// Build with the package's profile exactly as written. By default the
    /// profile's LTO is turned off and incremental compilation on, which
    /// takes an edit of a small crate from ~1.2 s to ~0.3 s (see README:
    /// `roost dev`).
    pub exact_profile: bool,
}

impl Project {
    /// The project that builds `output`, or why none was found (for a log
    /// line: the route is served, just not rebuilt).
    pub fn find(output: &Path) -> Result<Self, String> {
        let output = normalize(output);
        if let Some(found) = find_rust(&output)? {
            return Ok(found);
        }
        if let Some(found) = find_js(&output)? {
            return Ok(found);
        }
        Err("no cargo target directory or package.json with a `roost.output` builds it".into())
    }

    /// Whether a change to `path` may change the build's result.
    pub fn is_source(&self, path: &Path) -> bool {
        let path = normalize(path);
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return false;
        };
        if self.excluded.iter().any(|dir| path.starts_with(dir)) {
            return false;
        }
        // Hidden files and directories (.git, editor locks and swap files)
        // and editors' backup and probe files are not sources.
        let hidden = relative.components().any(|part| {
            matches!(part, Component::Normal(name) if name.to_string_lossy().starts_with('.'))
        });
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let scratch = name.is_some_and(|name| {
            name.ends_with('~')
                || [".swp", ".swx", ".tmp"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
                || name == "4913"
        });
        !hidden && !scratch
    }

    /// The directories to watch for source changes: the root itself (its
    /// files), and each of its subdirectories that is not excluded, with
    /// everything below it. A recursive watch of the root would also watch
    /// every directory of `target/` or `node_modules/`.
    pub fn watch_dirs(&self) -> (PathBuf, Vec<PathBuf>) {
        let mut subdirs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() && self.is_source(&path.join("x")) {
                    subdirs.push(path);
                }
            }
        }
        subdirs.sort();
        (self.root.clone(), subdirs)
    }

    /// The build command, ready to spawn (output piped by the caller).
    pub fn command(&self, rust: RustBuild) -> Command {
        match &self.kind {
            Kind::Rust {
                workspace,
                package,
                target_dir,
                triple,
                profile,
            } => {
                let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
                cargo
                    .current_dir(workspace)
                    .arg("build")
                    .args(profile_args(profile))
                    .args(["--target", triple])
                    .args(["-p", package])
                    .env("CARGO_TARGET_DIR", target_dir);
                for var in CARGO_ENV_REMOVED {
                    cargo.env_remove(var);
                }
                if !rust.exact_profile {
                    let name = profile_env_name(profile);
                    cargo
                        .env(format!("CARGO_PROFILE_{name}_LTO"), "false")
                        .env(format!("CARGO_PROFILE_{name}_INCREMENTAL"), "true")
                        .env(format!("CARGO_PROFILE_{name}_CODEGEN_UNITS"), "16");
                }
                cargo
            }
            Kind::Js { bin } => {
                let mut node = Command::new("node");
                node.current_dir(&self.root)
                    .arg(bin)
                    .arg("build")
                    .arg("-o")
                    .arg(&self.output);
                node
            }
        }
    }

    /// The command as a person would type it (in backquotes), and where.
    pub fn describe(&self, rust: RustBuild) -> String {
        let command = self.command(rust);
        let mut words: Vec<String> = vec![display_program(command.get_program())];
        words.extend(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        );
        let dir = command
            .get_current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        format!("`{}` in {dir}", words.join(" "))
    }

    /// `rust` or `js`.
    pub fn lang(&self) -> &'static str {
        match self.kind {
            Kind::Rust { .. } => "rust",
            Kind::Js { .. } => "js",
        }
    }

    /// The prefix of its build's output lines: the plugin's name, and for
    /// JS the language too (the sample config serves a Rust and a JS
    /// `room_chat`).
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Rust { .. } => self.plugin.clone(),
            Kind::Js { .. } => format!("{} (js)", self.plugin),
        }
    }

    /// What builds it, for the log line when watching starts.
    pub fn summary(&self) -> String {
        match &self.kind {
            Kind::Rust {
                workspace, package, ..
            } => format!(
                "rust package `{package}` of workspace {}",
                workspace.display()
            ),
            Kind::Js { bin } => format!(
                "js package {} (roost-js {})",
                self.root.display(),
                bin.display()
            ),
        }
    }
}

fn display_program(program: &std::ffi::OsStr) -> String {
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

fn profile_args(profile: &str) -> Vec<String> {
    match profile {
        "release" => vec!["--release".into()],
        "debug" => Vec::new(),
        other => vec!["--profile".into(), other.into()],
    }
}

/// The profile's name in `CARGO_PROFILE_<NAME>_*` (the `debug` directory is
/// the `dev` profile's).
fn profile_env_name(profile: &str) -> String {
    let name = if profile == "debug" { "dev" } else { profile };
    name.to_uppercase().replace('-', "_")
}

/// `<target>/<wasm32-…>/<profile>/<crate>.wasm`: the package whose cdylib
/// that is, in the workspace that owns `<target>` or, failing that, in the
/// workspace of the sources its dep-info file lists.
fn find_rust(output: &Path) -> Result<Option<Project>, String> {
    let parts = (|| {
        let profile_dir = output.parent()?;
        let triple_dir = profile_dir.parent()?;
        let triple = triple_dir.file_name()?.to_str()?;
        if !triple.starts_with("wasm32-") || output.extension()? != "wasm" {
            return None;
        }
        Some((
            triple_dir.parent()?.to_owned(),
            triple.to_owned(),
            profile_dir.file_name()?.to_str()?.to_owned(),
            output.file_stem()?.to_str()?.to_owned(),
        ))
    })();
    let Some((target_dir, triple, profile, crate_name)) = parts else {
        return Ok(None);
    };
    let mut candidates = Vec::new();
    if let Some(parent) = target_dir.parent()
        && parent.join("Cargo.toml").is_file()
    {
        candidates.push(parent.to_owned());
    }
    for source in dep_info_sources(&output.with_extension("d")) {
        if let Some(manifest_dir) = source
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("Cargo.toml").is_file())
            && !candidates.iter().any(|c| c == manifest_dir)
        {
            candidates.push(manifest_dir.to_owned());
        }
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut checked = Vec::new();
    for dir in candidates {
        let metadata = metadata(&dir)?;
        let Some(root) = metadata["workspace_root"].as_str().map(PathBuf::from) else {
            continue;
        };
        if checked.contains(&root) {
            continue;
        }
        if let Some((package, manifest_dir)) = cdylib_package(&metadata, &crate_name) {
            let mut excluded = vec![manifest_dir.join("target"), target_dir.clone()];
            excluded.dedup();
            return Ok(Some(Project {
                output: output.to_owned(),
                plugin: crate_name,
                root: manifest_dir,
                excluded,
                kind: Kind::Rust {
                    workspace: root,
                    package,
                    target_dir,
                    triple,
                    profile,
                },
            }));
        }
        checked.push(root);
    }
    Err(format!(
        "it is in a cargo target directory, but no package of {} has a cdylib named `{crate_name}`",
        checked
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// `cargo metadata --no-deps` of the workspace `dir` is in.
fn metadata(dir: &Path) -> Result<Value, String> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cargo
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"]);
    for var in CARGO_ENV_REMOVED {
        cargo.env_remove(var);
    }
    let out = cargo
        .output()
        .map_err(|e| format!("running cargo metadata in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading cargo metadata of {}: {e}", dir.display()))
}

/// The package (name, directory) with a cdylib target named `crate_name`
/// (cargo writes `my-plugin`'s as `my_plugin.wasm`).
fn cdylib_package(metadata: &Value, crate_name: &str) -> Option<(String, PathBuf)> {
    metadata["packages"].as_array()?.iter().find_map(|package| {
        let builds_it = package["targets"].as_array()?.iter().any(|target| {
            let cdylib = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
            cdylib
                && target["name"]
                    .as_str()
                    .is_some_and(|n| n.replace('-', "_") == crate_name)
        });
        if !builds_it {
            return None;
        }
        let manifest = PathBuf::from(package["manifest_path"].as_str()?);
        Some((
            package["name"].as_str()?.to_owned(),
            manifest.parent()?.to_owned(),
        ))
    })
}

/// The sources a cargo dep-info file (`out: src1 src2 …`, spaces in paths
/// escaped) lists for its first target; none if there is no such file.
fn dep_info_sources(file: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Some(first) = text.lines().next() else {
        return Vec::new();
    };
    // The target ends at the first `: ` that is not escaped.
    let Some(at) = first.find(": ") else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = first[at + 2..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    // The package's own sources come last in practice (its dependencies'
    // path sources sort first), so look at them first.
    sources.reverse();
    sources
}

/// The nearest `package.json` above `output` with a `roost` section whose
/// `output` (relative to the package, default `plugin.wasm`) is `output`.
fn find_js(output: &Path) -> Result<Option<Project>, String> {
    for dir in output.ancestors().skip(1) {
        let manifest = dir.join("package.json");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let package: Value = serde_json::from_str(&text)
            .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
        let Some(roost) = package.get("roost") else {
            continue;
        };
        let built = normalize(&dir.join(roost["output"].as_str().unwrap_or("plugin.wasm")));
        if built != output {
            continue;
        }
        let bin = roost_js(dir, &package).ok_or_else(|| {
            format!(
                "{} builds it, but has no roost-js: run `npm install` there",
                manifest.display()
            )
        })?;
        let mut excluded = vec![dir.join("node_modules")];
        if let Some(out_dir) = output.parent()
            && out_dir != dir
        {
            excluded.push(out_dir.to_owned());
        }
        let plugin = output
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
        return Ok(Some(Project {
            output: output.to_owned(),
            plugin,
            root: dir.to_owned(),
            excluded,
            kind: Kind::Js { bin },
        }));
    }
    Ok(None)
}

/// The `roost-js` the package builds with: its installed `@roost/guest`
/// (what `npm run build` runs), else the SDK its `file:` dependency names
/// (a package inside a Roost checkout that was never `npm install`ed uses
/// the checkout's SDK, which has its own `node_modules`).
fn roost_js(dir: &Path, package: &Value) -> Option<PathBuf> {
    let installed = dir.join("node_modules/@roost/guest/bin/roost-js.js");
    if installed.is_file() {
        return Some(installed);
    }
    let spec = package["dependencies"]["@roost/guest"].as_str()?;
    let sdk = spec.strip_prefix("file:")?;
    let bin = normalize(&dir.join(sdk).join("bin/roost-js.js"));
    bin.is_file().then_some(bin)
}

/// Drops `.` and folds `..`, so that paths from the config and from file
/// events compare equal (the config's are absolute, not canonical).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_sources_with_escaped_spaces_package_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ping.d");
        std::fs::write(
            &file,
            "/t/ping.wasm: /sdk/src/lib.rs /my\\ plugins/ping/src/lib.rs\n\n/other: x\n",
        )
        .unwrap();
        assert_eq!(
            dep_info_sources(&file),
            [
                PathBuf::from("/my plugins/ping/src/lib.rs"),
                PathBuf::from("/sdk/src/lib.rs")
            ]
        );
        assert!(dep_info_sources(&dir.path().join("none.d")).is_empty());
    }

    #[test]
    fn sources_exclude_outputs_hidden_and_scratch_files() {
        let project = Project {
            output: "/p/dist/x.wasm".into(),
            plugin: "x".into(),
            root: "/p".into(),
            excluded: vec!["/p/node_modules".into(), "/p/dist".into()],
            kind: Kind::Js {
                bin: "/sdk/bin/roost-js.js".into(),
            },
        };
        for yes in ["/p/src/index.js", "/p/package.json", "/p/src/../lib/a.js"] {
            assert!(project.is_source(Path::new(yes)), "{yes}");
        }
        for no in [
            "/p/dist/x.wasm",
            "/p/dist/x.wasm.tmp",
            "/p/node_modules/a/b.js",
            "/p/.git/index",
            "/p/src/.index.js.swp",
            "/p/src/index.js~",
            "/p/src/4913",
            "/q/src/index.js",
        ] {
            assert!(!project.is_source(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn a_js_package_builds_its_roost_output_with_its_file_sdk() {
        let root = tempfile::tempdir().unwrap();
        let sdk = root.path().join("guest-sdk/js");
        std::fs::create_dir_all(sdk.join("bin")).unwrap();
        std::fs::write(sdk.join("bin/roost-js.js"), "").unwrap();
        let dir = root.path().join("plugins/js/lobby");
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"roost": {"output": "dist/lobby.wasm"}, "dependencies": {"@roost/guest": "file:../../../guest-sdk/js"}}"#,
        )
        .unwrap();
        let project = Project::find(&dir.join("dist/lobby.wasm")).unwrap();
        assert_eq!(project.plugin, "lobby");
        assert_eq!(project.root, dir);
        let Kind::Js { bin } = &project.kind else {
            panic!("not js: {project:?}")
        };
        assert_eq!(*bin, sdk.join("bin/roost-js.js"));
        assert!(project.is_source(&dir.join("src/index.js")));
        assert!(!project.is_source(&dir.join("dist/lobby.wasm")));
        assert_eq!(project.watch_dirs(), (dir.clone(), vec![dir.join("src")]));
        assert!(Project::find(&dir.join("dist/other.wasm")).is_err());
    }

    #[test]
    fn profiles_map_to_cargo_flags_and_env_names() {
        assert_eq!(profile_args("release"), ["--release"]);
        assert!(profile_args("debug").is_empty());
        assert_eq!(profile_args("wasm-fast"), ["--profile", "wasm-fast"]);
        assert_eq!(profile_env_name("debug"), "DEV");
        assert_eq!(profile_env_name("wasm-fast"), "WASM_FAST");
    }
}
