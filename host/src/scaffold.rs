//! `roost new`: a new plugin project, in Rust or JavaScript, that builds as
//! it is.
//!
//! [`create`] checks the name, writes the project (a README of three lines,
//! a channel with a `join` and one event, the build files) into a directory
//! that must not exist yet, and returns the route to add to a config.
//! [`add_route`] puts that route into a config file's `[apps.<app>.routes]`
//! table as text, so the file's comments and layout stay as they were.
//!
//! The project depends on this checkout's SDK (`guest-sdk/` for Rust,
//! `guest-sdk/js/` for JS) by relative path, found by walking up from the
//! project's directory: neither SDK is published to a registry yet. Called
//! from `main.rs`; knows nothing of the server.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate built for `wasm32-wasip2` with `roost-guest`.
    Rust,
    /// An npm package built with `@roost/guest`'s `roost-js build`.
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rust => "rust",
            Self::Js => "js",
        })
    }
}

/// What [`create`] made.
#[derive(Debug)]
pub struct Created {
    /// The project's directory.
    pub dir: PathBuf,
    /// The topic pattern the plugin serves.
    pub topic: String,
    /// The component the build writes.
    pub output: PathBuf,
    /// The command that builds it, run in [`Created::dir`].
    pub build: &'static str,
}

impl Created {
    /// The route line for a config's `[apps.<app>.routes]`, with the plugin
    /// path relative to the config's directory (absolute if it has none in
    /// common).
    pub fn route_line(&self, config_dir: &Path) -> String {
        let path = relative(config_dir, &self.output);
        format!(
            "{} = {}",
            toml_string(&self.topic),
            toml_string(&path.to_string_lossy())
        )
    }
}

/// Names that are valid as a crate and as an npm package, and that Cargo
/// does not reserve: lowercase letters, digits, `-` and `_`, starting with
/// a letter, at most 64 characters.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    const RESERVED: &[&str] = &[
        "test",
        "std",
        "core",
        "alloc",
        "proc_macro",
        "self",
        "super",
        "crate",
        "fn",
        "mod",
        "struct",
        "enum",
        "impl",
        "trait",
        "type",
        "use",
        "let",
        "match",
        "loop",
        "while",
        "for",
        "if",
        "else",
        "return",
        "async",
        "await",
        "dyn",
        "move",
        "ref",
        "static",
        "const",
        "unsafe",
        "where",
        "pub",
        "extern",
        "true",
        "false",
        "node_modules",
    ];
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.ends_with(['-', '_']);
    if !valid {
        bail!(
            "`{name}` is not a valid plugin name: use lowercase letters, digits, `-` and `_`, \
             starting with a letter (at most 64 characters), e.g. `chat-room`"
        );
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        bail!("`{name}` is reserved by Cargo or Rust; pick another name");
    }
    Ok(())
}

/// Writes a new plugin project `name` into `dir` (which must not exist),
/// serving `topic` (default `<name>:*`), depending on the SDK of the Roost
/// checkout `dir` is in.
pub fn create(name: &str, lang: Lang, topic: Option<&str>, dir: &Path) -> anyhow::Result<Created> {
    check_name(name)?;
    let parent = absolute(dir.parent().unwrap_or(Path::new(".")))?;
    let sdk = find_sdk(&parent, lang)?;
    create_with_sdk(name, lang, topic, dir, &sdk)
}

/// [`create`], depending on the SDK at `sdk` (`guest-sdk/` for Rust,
/// `guest-sdk/js/` for JS) wherever `dir` is: for projects made outside a
/// checkout, as the tests and the `dev` bench do.
pub fn create_with_sdk(
    name: &str,
    lang: Lang,
    topic: Option<&str>,
    dir: &Path,
    sdk: &Path,
) -> anyhow::Result<Created> {
    check_name(name)?;
    let topic = topic.map_or_else(|| format!("{name}:*"), str::to_owned);
    check_topic(&topic)?;
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or --dir",
            dir.display()
        );
    }
    let parent = absolute(dir.parent().unwrap_or(Path::new(".")))?;
    let dir = parent.join(
        dir.file_name()
            .context("the project directory has no name")?,
    );
    let sdk = relative(&dir, &absolute(sdk)?);
    let files = match lang {
        Lang::Rust => rust_files(name, &topic, &sdk),
        Lang::Js => js_files(name, &topic, &sdk),
    };
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let (output, build) = match lang {
        Lang::Rust => (
            dir.join("target/wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_"))),
            "cargo build --release --target wasm32-wasip2",
        ),
        Lang::Js => (
            dir.join("dist").join(format!("{name}.wasm")),
            "npm install && npm run build",
        ),
    };
    Ok(Created {
        dir,
        topic,
        output,
        build,
    })
}

/// Adds `line` (from [`Created::route_line`]) to `[apps.<app>.routes]` in
/// the config file `config`, right under the table's header, keeping the
/// rest of the file as it is. Refuses if the app has no routes table or the
/// topic is routed already.
pub fn add_route(config: &Path, app: &str, line: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let header = format!("[apps.{app}.routes]");
    let Some(at) = text
        .lines()
        .position(|l| l.trim_start().starts_with(&header))
    else {
        bail!(
            "{} has no `{header}` table; add it, with the line:\n{line}",
            config.display()
        );
    };
    let key = line.split(" = ").next().unwrap_or_default();
    let routed = text
        .lines()
        .skip(at + 1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .any(|l| l.trim_start().starts_with(key));
    if routed {
        bail!("app `{app}` already routes {key} in {}", config.display());
    }
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(at + 1, line);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(config, out).with_context(|| format!("writing {}", config.display()))
}

/// `roost new`: creates the project (in `plugins/<name>`, or
/// `plugins/js/<name>` for JS, by default), then adds its route to `app` in
/// `config`, or prints the line to add, and the build command.
pub fn run(
    name: &str,
    lang: Lang,
    topic: Option<&str>,
    dir: Option<&Path>,
    config: &Path,
    app: Option<&str>,
) -> anyhow::Result<()> {
    let dir = dir.map_or_else(
        || match lang {
            Lang::Rust => Path::new("plugins").join(name),
            Lang::Js => Path::new("plugins/js").join(name),
        },
        Path::to_path_buf,
    );
    let made = create(name, lang, topic, &dir)?;
    let config_dir = absolute(config.parent().unwrap_or(Path::new(".")))?;
    let line = made.route_line(&config_dir);
    println!("created {} ({lang})", made.dir.display());
    println!("build it:  cd {} && {}", made.dir.display(), made.build);
    match app {
        Some(app) => {
            add_route(config, app, &line)?;
            println!(
                "routed in {} under [apps.{app}.routes]: {line}
(`roost dev` builds it, then rebuilds it on every save; for `roost serve`, build it first: \
the route names the file the build writes)",
                config.display()
            );
        }
        None => println!(
            "then route it: add to [apps.<app>.routes] in {}:
{line}",
            config.display()
        ),
    }
    Ok(())
}

fn check_topic(topic: &str) -> anyhow::Result<()> {
    let star = topic.find('*');
    if topic.is_empty() || star.is_some_and(|at| at != topic.len() - 1) || topic.contains('"') {
        bail!(
            "`{topic}` is not a topic pattern: exact (`lobby`) or a prefix ending in `*` (`room:*`)"
        );
    }
    Ok(())
}

/// The SDK for `lang` in this checkout: the nearest `guest-sdk/` above
/// `from`.
fn find_sdk(from: &Path, lang: Lang) -> anyhow::Result<PathBuf> {
    let marker = match lang {
        Lang::Rust => "guest-sdk/Cargo.toml",
        Lang::Js => "guest-sdk/js/package.json",
    };
    from.ancestors()
        .find(|dir| dir.join(marker).is_file())
        .map(|dir| match lang {
            Lang::Rust => dir.join("guest-sdk"),
            Lang::Js => dir.join("guest-sdk/js"),
        })
        .with_context(|| {
            format!(
                "no Roost guest SDK ({marker}) above {}: create the plugin inside a Roost checkout",
                from.display()
            )
        })
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    std::path::absolute(path)
        .map(|p| normalize(&p))
        .with_context(|| format!("resolving {}", path.display()))
}

/// Drops `.` and folds `..` (the paths here are made, not read from links).
fn normalize(path: &Path) -> PathBuf {
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

/// `to` relative to `from` (both absolute), e.g. `../../guest-sdk`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (normalize(from), normalize(to));
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    if common == 0 {
        return to;
    }
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for part in to.components().skip(common) {
        out.push(part);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn readme(name: &str, topic: &str, build: &str, output: &str) -> String {
    format!(
        "# {name}\n\nA Roost channel plugin for `{topic}`: `join` replies `{{\"topic\": ...}}`, \
         `ping` replies `{{\"pong\": <count>}}`.\nBuild it with `{build}` (writes `{output}`), \
         then route `{topic}` to that file in the server's config.\n"
    )
}

fn rust_files(name: &str, topic: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let lib = name.replace('-', "_");
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
roost-guest = {{ path = {sdk} }}

# A workspace of its own: built for wasm32-wasip2, apart from any other.
[workspace]

[profile.release]
opt-level = 3
lto = true
strip = true
codegen-units = 1
"#,
        sdk = toml_string(&sdk.to_string_lossy()),
    );
    let source = format!(
        r#"//! The `{name}` channel (routes `{topic}`): `join` replies with the topic and
//! starts a count; `ping` adds one and replies `{{"pong": <count>}}`.

use roost_guest::prelude::*;

struct Plugin;

impl Channel for Plugin {{
    fn join(topic: &str, _payload: Payload, socket: &mut Socket) -> JoinResult {{
        socket.assign("pings", json!(0));
        Ok(Joined::reply(json!({{ "topic": topic }})))
    }}

    fn handle_in(event: &str, _payload: Payload, socket: &mut Socket) -> Outcome {{
        match event {{
            "ping" => {{
                let pings = socket.assigns()["pings"].as_i64().unwrap_or(0) + 1;
                socket.assign("pings", json!(pings));
                reply_ok(json!({{ "pong": pings }}))
            }}
            _ => noreply(),
        }}
    }}
}}

export_channel!(Plugin);
"#
    );
    let build = "cargo build --release --target wasm32-wasip2";
    let output = format!("target/wasm32-wasip2/release/{lib}.wasm");
    vec![
        ("README.md", readme(name, topic, build, &output)),
        ("Cargo.toml", cargo),
        ("src/lib.rs", source),
        (".gitignore", "/target\n".to_owned()),
    ]
}

fn js_files(name: &str, topic: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let package = format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "roost-js build"
  }},
  "roost": {{
    "entry": "src/index.js",
    "output": "dist/{name}.wasm"
  }},
  "dependencies": {{
    "@roost/guest": {sdk}
  }}
}}
"#,
        sdk = serde_json::Value::String(format!("file:{}", sdk.to_string_lossy())),
    );
    let source = format!(
        r#"// The `{name}` channel (routes `{topic}`): `join` replies with the topic and
// starts a count; `ping` adds one and replies `{{"pong": <count>}}`.

import {{ noreply, reply }} from "@roost/guest";

export default {{
  join(topic, payload, socket) {{
    socket.assign("pings", 0);
    return reply.ok({{ topic }});
  }},

  handleIn(event, payload, socket) {{
    if (event !== "ping") return noreply();
    const pings = (socket.assigns.pings ?? 0) + 1;
    socket.assign("pings", pings);
    return reply.ok({{ pong: pings }});
  }},
}};
"#
    );
    let build = "npm install && npm run build";
    let output = format!("dist/{name}.wasm");
    vec![
        ("README.md", readme(name, topic, build, &output)),
        ("package.json", package),
        ("src/index.js", source),
        // Installs the SDK as a package with its own dependencies (the
        // engines), not as a link to a checkout that may not have them.
        (".npmrc", "install-links=true\n".to_owned()),
        (".gitignore", "node_modules/\ndist/\n".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir with a fake checkout's
    /// SDK markers in it.
    fn checkout(tag: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("roost-scaffold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("guest-sdk/js")).unwrap();
        std::fs::write(root.join("guest-sdk/Cargo.toml"), "").unwrap();
        std::fs::write(root.join("guest-sdk/js/package.json"), "{}").unwrap();
        std::fs::create_dir_all(root.join("plugins")).unwrap();
        root
    }

    #[test]
    fn names_must_be_valid_crate_and_package_names() {
        for ok in ["chat", "chat-room", "room_2", "a"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "", "Chat", "2rooms", "-x", "x-", "a b", "a.b", "café", "test", "self", "std",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn a_rust_project_depends_on_the_checkouts_sdk_by_relative_path() {
        let root = checkout("rust");
        let made = create(
            "chat-room",
            Lang::Rust,
            None,
            &root.join("plugins/chat-room"),
        )
        .unwrap();
        let cargo = std::fs::read_to_string(made.dir.join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains(r#"roost-guest = { path = "../../guest-sdk" }"#),
            "{cargo}"
        );
        assert!(cargo.contains("name = \"chat-room\""));
        let lib = std::fs::read_to_string(made.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("export_channel!(Plugin);") && lib.contains("\"ping\" =>"));
        assert_eq!(made.topic, "chat-room:*");
        assert!(
            made.output
                .ends_with("target/wasm32-wasip2/release/chat_room.wasm")
        );
        let readme = std::fs::read_to_string(made.dir.join("README.md")).unwrap();
        assert_eq!(
            readme.lines().filter(|l| !l.is_empty()).count(),
            3,
            "{readme}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_js_project_depends_on_the_js_sdk() {
        let root = checkout("js");
        let made = create(
            "lobby",
            Lang::Js,
            Some("lobby"),
            &root.join("plugins/js/lobby"),
        )
        .unwrap();
        let package: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(made.dir.join("package.json")).unwrap())
                .unwrap();
        assert_eq!(
            package["dependencies"]["@roost/guest"],
            "file:../../../guest-sdk/js"
        );
        assert_eq!(package["roost"]["output"], "dist/lobby.wasm");
        assert!(made.dir.join("src/index.js").is_file());
        assert_eq!(
            made.route_line(&root),
            r#""lobby" = "plugins/js/lobby/dist/lobby.wasm""#
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_existing_directory_and_a_bad_topic_are_refused() {
        let root = checkout("exists");
        std::fs::create_dir_all(root.join("plugins/chat")).unwrap();
        let error = create("chat", Lang::Rust, None, &root.join("plugins/chat")).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        assert!(create("ok", Lang::Rust, Some("a*b"), &root.join("plugins/ok")).is_err());
        assert!(!root.join("plugins/ok").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn outside_a_checkout_there_is_no_sdk_to_depend_on() {
        let root = std::env::temp_dir().join(format!("roost-scaffold-bare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let error = create("chat", Lang::Js, None, &root.join("chat")).unwrap_err();
        assert!(error.to_string().contains("no Roost guest SDK"), "{error}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn add_route_inserts_under_the_apps_routes_and_keeps_the_rest() {
        let root = checkout("route");
        let config = root.join("roost.toml");
        let text = "# comment\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"ping\" = \"p.wasm\" # keep\n\n[apps.demo.limits]\n";
        std::fs::write(&config, text).unwrap();
        add_route(&config, "demo", r#""chat:*" = "c.wasm""#).unwrap();
        let after = std::fs::read_to_string(&config).unwrap();
        assert_eq!(
            after,
            "# comment\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"chat:*\" = \"c.wasm\"\n\"ping\" = \"p.wasm\" # keep\n\n[apps.demo.limits]\n"
        );
        assert!(add_route(&config, "demo", r#""chat:*" = "d.wasm""#).is_err());
        assert!(add_route(&config, "shop", r#""x" = "x.wasm""#).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn relative_paths_walk_up_and_down() {
        assert_eq!(
            relative(Path::new("/a/b/c"), Path::new("/a/d")),
            PathBuf::from("../../d")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/b")),
            PathBuf::from("b")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a")),
            PathBuf::from(".")
        );
    }
}
