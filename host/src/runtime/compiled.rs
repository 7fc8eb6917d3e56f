//! One compiled version of a plugin file: the component, linked and checked
//! against the `roost:channel` world once, whatever number of apps route to
//! it. Apps each serve it through their own [`Plugin`](super::Plugin), which
//! holds that app's warm instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::{ChannelPre, StoreData};
use super::plugin::Warm;

/// The WIT world every plugin is linked against (`wit/v0.1`).
const WIT_WORLD: &str = "roost:channel@0.1.0";

pub struct Compiled {
    /// The file stem, e.g. `room_chat`.
    name: Arc<str>,
    path: PathBuf,
    /// Content hash of the file this version was compiled from.
    version: String,
    loaded_at: SystemTime,
    pub(super) pre: ChannelPre<StoreData>,
    /// Broadcast events this version handles in `handle_out`.
    intercepts: Vec<String>,
}

impl Compiled {
    /// Compiles the file off the async threads, then validates the result by
    /// instantiating it once and reading its intercepts.
    pub(super) async fn load(
        runtime: &Runtime,
        path: &Path,
        version: String,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let engine = runtime.engine().clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await?
            .map_err(super::anyhow_error)
            .with_context(|| format!("compiling plugin {}", path.display()))?;
        Self::link(runtime, path, version, &component)
            .await
            .with_context(|| format!("loading plugin {}", path.display()))
    }

    async fn link(
        runtime: &Runtime,
        path: &Path,
        version: String,
        component: &Component,
    ) -> anyhow::Result<Self> {
        let instance_pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(super::anyhow_error)
            .context("the component does not fit the roost:channel world")?;
        let pre = ChannelPre::new(instance_pre)
            .map_err(super::anyhow_error)
            .context("the component does not export roost:channel/handler")?;
        let name = path
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into());
        // One instantiation proves the component starts; its intercepts are
        // fixed per version.
        let intercepts = Warm::intercepts(runtime, &pre, &name).await?;
        Ok(Self {
            name,
            path: path.to_owned(),
            version,
            loaded_at: SystemTime::now(),
            pre,
            intercepts,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The WIT world (package and version) this version was linked against.
    pub fn wit(&self) -> &'static str {
        WIT_WORLD
    }

    /// Whether this version handles `event` in `handle_out`.
    pub fn intercepts(&self, event: &str) -> bool {
        self.intercepts.iter().any(|e| e == event)
    }
}

/// The first 16 hex digits of the file's SHA-256: enough to tell versions apart.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
