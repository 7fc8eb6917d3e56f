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
use super::plugin::Warm;
use super::store::StoreData;
use super::{world_v01 as v01, world_v02 as v02};

/// A component linked for either contract version, ready to instantiate.
pub(super) enum Pre {
    V01(v01::ChannelPre<StoreData>),
    V02(v02::PluginPre<StoreData>),
}

pub struct Compiled {
    /// The file stem, e.g. `room_chat`.
    name: Arc<str>,
    path: PathBuf,
    /// Content hash of the file this version was compiled from.
    version: String,
    loaded_at: SystemTime,
    pub(super) pre: Pre,
    /// The interfaces the component imports (`roost:channel/kv@0.2.0`, …).
    imports: Vec<String>,
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
            .context("the component imports something the host does not offer (roost:channel@0.1.0 or @0.2.0, and WASI 0.2)")?;
        let pre = match v02::PluginPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::V02(pre),
            Err(_) => Pre::V01(
                v01::ChannelPre::new(instance_pre)
                    .map_err(super::anyhow_error)
                    .context(
                        "the component exports neither roost:channel/handler@0.2.0 nor @0.1.0",
                    )?,
            ),
        };
        let imports = component
            .component_type()
            .imports(runtime.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
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
            imports,
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

    /// The contract the component was built against, as its package
    /// name: `roost:channel@0.2.0` or `roost:channel@0.1.0`.
    pub fn wit(&self) -> &'static str {
        match self.pre {
            Pre::V01(_) => "roost:channel@0.1.0",
            Pre::V02(_) => "roost:channel@0.2.0",
        }
    }

    /// Whether the component imports key-value storage, a capability its
    /// app must grant.
    pub fn uses_kv(&self) -> bool {
        self.imports.iter().any(|name| name == v02::KV_INTERFACE)
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
