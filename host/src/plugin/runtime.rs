//! The plugin runtime: one [`Engine`], one [`Linker`] per world and contract version,
//! one [`InstancePre`](wasmtime::component::InstancePre) per plugin digest, and a fresh,
//! limited [`Store`] for every call.
//!
//! Why a fresh instance per call: a plugin cannot keep state between conversions, so a
//! rule stays a pure function and one bad call cannot poison the next. With the pooling
//! allocator an instantiation costs microseconds (see docs/PERFORMANCE.md).

use super::error::{CallError, LoadError, PluginLabel};
use super::http::{HttpClient, HttpGrant};
use super::inspect;
use super::limits::{LimitHit, Limits, LimitsOverride};
use super::manifest::{Manifest, PluginConfig, PluginKind};
use super::state::{Clock, LogLine, PluginState};
use super::store::{ContentStore, Digest};
use super::wire::WireSize;
use super::wit::{SUPPORTED_API_VERSIONS, latest, since_v0_1_0 as v0_1};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

/// Host-side settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where components and compiled artifacts are stored.
    pub store_dir: PathBuf,
    /// Limits of a plugin whose manifest asks for nothing.
    pub defaults: Limits,
    /// The most a manifest may ask for.
    pub maxima: Limits,
    /// Plugin calls that may run at once (the pooling allocator's slots).
    pub max_concurrent_calls: u32,
    /// How often the epoch ticks; deadlines are measured in ticks.
    pub epoch_tick: Duration,
    /// Operator overrides per plugin name, applied over the manifest (within maxima).
    pub overrides: HashMap<String, LimitsOverride>,
    /// Adapters' `http.fetch` may reach private, loopback and link-local addresses
    /// (`plugin.http_allow_private`; off: see [`crate::outbound`]).
    pub http_allow_private: bool,
}

impl RuntimeConfig {
    /// Defaults, storing under `store_dir`.
    pub fn new(store_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            store_dir: store_dir.into(),
            defaults: Limits::host_defaults(),
            maxima: Limits::host_maxima(),
            max_concurrent_calls: 64,
            epoch_tick: Duration::from_millis(1),
            overrides: HashMap::new(),
            http_allow_private: false,
        }
    }
}

/// A compiled, linked plugin version, ready to instantiate.
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// Content digest of the component.
    pub digest: Digest,
    /// The contract version it speaks.
    pub api_version: String,
    /// Its own fixtures (JSON), if embedded.
    pub fixtures: Option<String>,
    /// Effective per-call limits.
    pub limits: Limits,
    /// The names of its imports, for `plugin inspect`.
    pub imports: Vec<String>,
    /// The names of its exports.
    pub exports: Vec<String>,
    pre: Pre,
    label: Arc<PluginLabel>,
}

/// One pre-linked instance per contract version and world; a new contract version adds
/// variants here and the call sites convert its values to the latest types (in the
/// version's own module, `wit/since_v*.rs`).
enum Pre {
    RulesV0_1(v0_1::MerchantRulesPre<PluginState>),
    AdapterV0_1(v0_1::NetworkAdapterPre<PluginState>),
    RulesV0_2(latest::MerchantRulesPre<PluginState>),
    AdapterV0_2(latest::NetworkAdapterPre<PluginState>),
    PartnerV0_2(latest::PartnerCallbackPre<PluginState>),
}

/// An instantiated adapter's exports, whichever contract version it speaks, in the
/// latest types.
enum AdapterExports<'a> {
    V0_1(&'a v0_1::adapter_world::exports::cashback::plugin::adapter::Guest),
    V0_2(&'a latest::adapter_world::exports::cashback::plugin::adapter::Guest),
}

impl AdapterExports<'_> {
    fn parse_postback(
        &self,
        store: &mut Store<PluginState>,
        r: &latest::PostbackRequest,
    ) -> wasmtime::Result<Result<Vec<latest::ConversionEvent>, latest::PluginError>> {
        match self {
            AdapterExports::V0_1(g) => v0_1::parse_postback(g, store, r),
            AdapterExports::V0_2(g) => g.call_parse_postback(store, r),
        }
    }

    fn import_page(
        &self,
        store: &mut Store<PluginState>,
        r: &latest::ImportRequest,
    ) -> wasmtime::Result<Result<latest::Page, latest::PluginError>> {
        match self {
            AdapterExports::V0_1(g) => v0_1::import_page(g, store, r),
            AdapterExports::V0_2(g) => g.call_import_page(store, r),
        }
    }

    fn parse_file(
        &self,
        store: &mut Store<PluginState>,
        name: &str,
        contents: &[u8],
    ) -> wasmtime::Result<Result<latest::FileResult, latest::PluginError>> {
        match self {
            AdapterExports::V0_1(g) => v0_1::parse_file(g, store, name, contents),
            AdapterExports::V0_2(g) => g.call_parse_file(store, name, contents),
        }
    }
}

impl LoadedPlugin {
    /// How errors name it.
    pub fn label(&self) -> &Arc<PluginLabel> {
        &self.label
    }

    /// Its kind.
    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("plugin", &self.label.to_string()).finish()
    }
}

/// The result of a call, with what the plugin logged.
#[derive(Debug)]
pub struct CallOutcome<T> {
    /// The result.
    pub result: Result<T, CallError>,
    /// What it logged (capped by its log limit).
    pub logs: Vec<LogLine>,
}

impl<T> CallOutcome<T> {
    fn failed(error: CallError) -> Self {
        CallOutcome { result: Err(error), logs: Vec::new() }
    }
}

std::thread_local! {
    /// Set while a plugin's fixtures run on this thread (calls are synchronous, so they run
    /// on the thread that asked): see [`proving`].
    static PROVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a plugin's fixtures, on this thread. A fixture may expect an error, and every
/// upload and activation runs the fixtures again: their calls' failures are the plugin
/// proving itself, not failures of live traffic, so they are logged at debug level only
/// and left out of the plugin call metrics (an operator's alerts watch those).
pub(crate) fn proving<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            PROVING.set(self.0);
        }
    }
    let _reset = Reset(PROVING.replace(true));
    f()
}

/// Loads and runs plugins. Cheap to share behind an `Arc`.
pub struct PluginRuntime {
    engine: Engine,
    engine_hash: String,
    /// One linker per contract version and world.
    linkers: Linkers,
    store: ContentStore,
    config: RuntimeConfig,
    loaded: Mutex<HashMap<Digest, Arc<LoadedPlugin>>>,
    http: HttpClient,
    compilations: AtomicU64,
    /// Whether the deadline ticker runs: without it no plugin deadline fires.
    ticking: AtomicBool,
    /// The pooling allocator's free instance slots.
    slots: CallSlots,
}

/// A call waits here for one of the pooling allocator's `max_concurrent_calls` slots.
/// Without it the call beyond them traps ("maximum concurrent limit of 64 for component
/// instances reached") and a healthy conversion is recorded as failed: a file import
/// records 256 conversions at once, and their rule calls come in bursts. Calls run on
/// blocking threads, and each holds its slot for at most its deadline, so the wait is
/// bounded.
#[derive(Debug)]
struct CallSlots {
    free: Mutex<u32>,
    freed: Condvar,
}

/// A slot taken; given back when dropped.
struct Slot<'a>(&'a CallSlots);

impl CallSlots {
    fn new(slots: u32) -> CallSlots {
        CallSlots { free: Mutex::new(slots), freed: Condvar::new() }
    }

    fn take(&self) -> Slot<'_> {
        // A panic while the lock is held leaves a count that is still right.
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("store", &self.store.root()).finish()
    }
}

/// The engine, configured once for the whole process.
fn engine(config: &RuntimeConfig) -> wasmtime::Result<Engine> {
    let mut c = Config::new();
    c.wasm_component_model(true);
    // Deadlines: a counter bumped by a ticker thread, checked by compiled code at loop
    // headers and function entries. Much cheaper per call than fuel, and a plugin that
    // loops forever is stopped within one tick of its deadline.
    c.epoch_interruption(true);
    // Deep recursion traps at this depth instead of growing without bound.
    c.max_wasm_stack(512 << 10);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // The pooling allocator pre-reserves slots for instances, memories and tables, so
    // instantiation per call is a few microseconds and memory cannot be fragmented by
    // a misbehaving plugin. Each slot's memory is capped at the hosts' maximum; the
    // per-plugin cap is enforced by the store's limiter below it.
    let slots = config.max_concurrent_calls;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 8)
        .total_memories(slots * 2)
        .total_tables(slots * 8)
        .total_stacks(slots)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_core_instances_per_component(16)
        .max_memory_size(config.maxima.memory_bytes())
        .table_elements(100_000)
        // Reset a slot's memory and tables in place (memset of what was dirtied) instead
        // of returning the pages to the kernel: a fresh instance then does not page-fault
        // its way through its stack and heap on every call.
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c)
}

/// One linker per contract version and world, each holding exactly what that world may
/// import at that version, plus a WASI that grants nothing (for plugins built for
/// wasm32-wasip2). A rule that imports `http` therefore fails to link: deny by default.
struct Linkers {
    rules_v0_1: Linker<PluginState>,
    adapter_v0_1: Linker<PluginState>,
    rules_v0_2: Linker<PluginState>,
    adapter_v0_2: Linker<PluginState>,
    partner_v0_2: Linker<PluginState>,
}

impl Linkers {
    fn new(engine: &Engine) -> anyhow::Result<Linkers> {
        fn linker(
            engine: &Engine,
            what: &str,
            add: impl FnOnce(&mut Linker<PluginState>) -> wasmtime::Result<()>,
        ) -> anyhow::Result<Linker<PluginState>> {
            let mut l = Linker::new(engine);
            add(&mut l).map_err(|e| anyhow::anyhow!("linking the {what} world: {e:?}"))?;
            wasmtime_wasi::p2::add_to_linker_sync(&mut l).map_err(|e| anyhow::anyhow!("linking WASI: {e:?}"))?;
            Ok(l)
        }
        type S = HasSelf<PluginState>;
        Ok(Linkers {
            rules_v0_1: linker(engine, "0.1.0 rules", |l| {
                v0_1::rules_world::MerchantRules::add_to_linker::<_, S>(l, |s| s)
            })?,
            adapter_v0_1: linker(engine, "0.1.0 adapter", |l| {
                v0_1::adapter_world::NetworkAdapter::add_to_linker::<_, S>(l, |s| s)
            })?,
            rules_v0_2: linker(engine, "0.2.0 rules", |l| {
                latest::rules_world::MerchantRules::add_to_linker::<_, S>(l, |s| s)
            })?,
            adapter_v0_2: linker(engine, "0.2.0 adapter", |l| {
                latest::adapter_world::NetworkAdapter::add_to_linker::<_, S>(l, |s| s)
            })?,
            partner_v0_2: linker(engine, "0.2.0 partner-callback", |l| {
                latest::partner_world::PartnerCallback::add_to_linker::<_, S>(l, |s| s)
            })?,
        })
    }
}

/// Bumps the epoch every tick for as long as the engine lives. False if the thread could
/// not be started.
fn start_epoch_ticker(engine: &Engine, tick: Duration) -> bool {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    });
    if let Err(e) = &spawned {
        tracing::error!(error = %e, "cannot start the plugin deadline ticker; plugin deadlines will not fire");
    }
    spawned.is_ok()
}

impl PluginRuntime {
    /// Builds the engine and linkers and opens the content store.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<PluginRuntime> {
        let engine = engine(&config).map_err(|e| anyhow::anyhow!("configuring wasmtime: {e:?}"))?;
        let ticking = AtomicBool::new(start_epoch_ticker(&engine, config.epoch_tick));
        let engine_hash = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };

        let linkers = Linkers::new(&engine)?;
        Ok(PluginRuntime {
            engine,
            engine_hash,
            linkers,
            store: ContentStore::open(&config.store_dir)?,
            http: HttpClient::new(config.http_allow_private)?,
            slots: CallSlots::new(config.max_concurrent_calls.max(1)),
            config,
            loaded: Mutex::new(HashMap::new()),
            compilations: AtomicU64::new(0),
            ticking,
        })
    }

    /// The engine (for benchmarks and tools).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many components this runtime compiled (not loaded from the artifact cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// The content store.
    pub fn content_store(&self) -> &ContentStore {
        &self.store
    }

    /// Host limit settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Whether plugins can be run safely (`/readyz`): the deadline ticker runs and the
    /// content store is there.
    pub fn health(&self) -> Result<(), String> {
        if !self.ticking.load(Ordering::Relaxed) {
            return Err("the plugin deadline ticker is not running".into());
        }
        if !self.store.root().is_dir() {
            return Err("the plugin store directory is missing".into());
        }
        Ok(())
    }

    /// Loads a component: checks its sections and contract version before compiling,
    /// stores it by digest, compiles it (or loads the cached artifact), checks its world
    /// and pre-links it. Loading the same bytes again returns the cached plugin.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        self.load_with_manifest(bytes, None)
    }

    /// Like [`load`](Self::load), with a manifest given beside the component (for
    /// components not built with the SDK). An embedded manifest wins if both exist.
    pub fn load_with_manifest(&self, bytes: &[u8], manifest: Option<&str>) -> Result<Arc<LoadedPlugin>, LoadError> {
        let digest = Digest::of(bytes);
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        let sections = inspect::sections(bytes)?;
        let manifest_text = sections.manifest.as_deref().or(manifest).ok_or(LoadError::NoManifest)?;
        let manifest = Manifest::parse(manifest_text, &self.config.maxima)?;
        let label = manifest.label();
        // The stamped version is what the plugin was compiled against; a mismatch is
        // refused here, before the component is compiled or instantiated.
        let api_version = sections.api_version.clone().unwrap_or_else(|| manifest.wit.clone());
        if !SUPPORTED_API_VERSIONS.contains(&api_version.as_str()) || api_version != manifest.wit {
            return Err(LoadError::ApiVersion {
                plugin: label,
                found: if api_version != manifest.wit {
                    format!("{api_version} (manifest says {})", manifest.wit)
                } else {
                    api_version
                },
                supported: SUPPORTED_API_VERSIONS.join(", "),
            });
        }

        self.store.put(bytes)?;
        let component = self.compile_cached(&digest, bytes, &label)?;

        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let v1 = api_version == v0_1::API_VERSION;
        let l = &self.linkers;
        let (expected, linker) = match (manifest.kind, v1) {
            (PluginKind::MerchantRules, true) => (v0_1::RULES_EXPORT, &l.rules_v0_1),
            (PluginKind::NetworkAdapter, true) => (v0_1::ADAPTER_EXPORT, &l.adapter_v0_1),
            (PluginKind::MerchantRules, false) => (latest::RULES_EXPORT, &l.rules_v0_2),
            (PluginKind::NetworkAdapter, false) => (latest::ADAPTER_EXPORT, &l.adapter_v0_2),
            // The manifest check refuses a partner-callback plugin at 0.1.0.
            (PluginKind::PartnerCallback, _) => (latest::CALLBACK_EXPORT, &l.partner_v0_2),
        };
        if !exports.iter().any(|e| e == expected) {
            return Err(LoadError::WrongWorld {
                plugin: label,
                kind: manifest.kind,
                expected,
                exports: exports.join(", "),
            });
        }
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link { plugin: label.clone(), reason: format!("{e:#}") })?;
        let link = |e: wasmtime::Error| LoadError::Link { plugin: label.clone(), reason: format!("{e:#}") };
        let pre = match (manifest.kind, v1) {
            (PluginKind::MerchantRules, true) => {
                Pre::RulesV0_1(v0_1::MerchantRulesPre::new(instance_pre).map_err(link)?)
            }
            (PluginKind::NetworkAdapter, true) => {
                Pre::AdapterV0_1(v0_1::NetworkAdapterPre::new(instance_pre).map_err(link)?)
            }
            (PluginKind::MerchantRules, false) => {
                Pre::RulesV0_2(latest::MerchantRulesPre::new(instance_pre).map_err(link)?)
            }
            (PluginKind::NetworkAdapter, false) => {
                Pre::AdapterV0_2(latest::NetworkAdapterPre::new(instance_pre).map_err(link)?)
            }
            (PluginKind::PartnerCallback, _) => {
                Pre::PartnerV0_2(latest::PartnerCallbackPre::new(instance_pre).map_err(link)?)
            }
        };
        let mut limits = self.config.defaults.with(&manifest.limits, &self.config.maxima);
        if let Some(over) = self.config.overrides.get(&manifest.name) {
            limits = limits.with(over, &self.config.maxima);
        }
        let plugin = Arc::new(LoadedPlugin {
            label: Arc::new(PluginLabel { name: manifest.name.clone(), version: manifest.version.to_string(), digest }),
            manifest,
            digest,
            api_version,
            fixtures: sections.fixtures,
            limits,
            imports,
            exports,
            pre,
        });
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, plugin.clone());
        Ok(plugin)
    }

    /// Loads a component stored earlier, by digest.
    pub fn load_digest(&self, digest: &Digest) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(p) = self.cached(digest) {
            return Ok(p);
        }
        let bytes = self.store.get(digest)?;
        self.load(&bytes)
    }

    fn cached(&self, digest: &Digest) -> Option<Arc<LoadedPlugin>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }

    /// Forgets a loaded plugin (its compiled artifact stays cached on disk).
    pub fn unload(&self, digest: &Digest) {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
    }

    fn compile_cached(&self, digest: &Digest, bytes: &[u8], label: &str) -> Result<Component, LoadError> {
        let path = self.store.artifact_path(digest, &self.engine_hash);
        if path.exists() {
            // SAFETY: the artifact was written by `precompile_component` of an engine
            // with the same compatibility hash (it is in the file name), atomically, into
            // the host's own store directory; wasmtime still checks its header.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = label, error = %format!("{e:#}"), "cached artifact unusable; recompiling")
                }
            }
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Compile { plugin: label.to_string(), reason: format!("{e:#}") })?;
        self.store.put_artifact(&path, &compiled)?;
        // SAFETY: as above; these are the bytes just produced by this engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| LoadError::Compile { plugin: label.to_string(), reason: format!("{e:#}") })
    }

    /// Compiles a component from scratch without caching (benchmarks: the cost a cache
    /// hit avoids).
    pub fn compile_uncached(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        Component::new(&self.engine, bytes)
    }

    /// Loads the cached artifact of a stored component (benchmarks).
    pub fn deserialize_cached(&self, digest: &Digest) -> wasmtime::Result<Component> {
        let path = self.store.artifact_path(digest, &self.engine_hash);
        // SAFETY: see `compile_cached`.
        unsafe { Component::deserialize_file(&self.engine, &path) }
    }

    fn new_store(&self, plugin: &LoadedPlugin, config: &PluginConfig, clock: Clock) -> Store<PluginState> {
        self.new_store_with(plugin, config, clock, &self.http)
    }

    fn new_store_with(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        clock: Clock,
        http: &HttpClient,
    ) -> Store<PluginState> {
        let http = (plugin.kind() == PluginKind::NetworkAdapter).then(|| HttpGrant {
            hosts: Arc::new(config.hosts.clone()),
            credentials: Arc::new(plugin.manifest.credentials.clone()),
            secrets: config.secrets.clone(),
            client: http.clone(),
            requests: 0,
            denied: Vec::new(),
        });
        let state = PluginState::new(plugin.limits, config.json.clone(), clock, http);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        let tick_ms = self.config.epoch_tick.as_millis().max(1) as u64;
        store.set_epoch_deadline(plugin.limits.deadline_ms.div_ceil(tick_ms));
        store.epoch_deadline_trap();
        store
    }

    fn check_input(plugin: &LoadedPlugin, size: u64) -> Result<(), CallError> {
        if size > plugin.limits.max_input_bytes {
            return Err(CallError::Limit {
                plugin: plugin.label.clone(),
                limit: LimitHit::InputSize { size, cap: plugin.limits.max_input_bytes },
            });
        }
        Ok(())
    }

    /// Runs `f` in a fresh store and turns every way it can fail into a [`CallError`]
    /// that names the plugin and, if a limit stopped it, the limit.
    fn run<T: WireSize>(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        clock: Clock,
        http: &HttpClient,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<Result<T, latest::PluginError>>,
    ) -> CallOutcome<T> {
        // Taken before the store and given back after it is dropped (locals drop in
        // reverse order), when its instance's slot is free again.
        let _slot = self.slots.take();
        let mut store = self.new_store_with(plugin, config, clock, http);
        let raw = f(&mut store);
        let state = store.data_mut();
        let logs = std::mem::take(&mut state.logs);
        let label = plugin.label.clone();
        let denied = state.http.as_ref().and_then(|h| h.denied.first().cloned());
        let result = match raw {
            Ok(Ok(value)) => {
                let size = value.wire_size();
                if size > plugin.limits.max_output_bytes {
                    Err(CallError::Limit {
                        plugin: label,
                        limit: LimitHit::OutputSize { size, cap: plugin.limits.max_output_bytes },
                    })
                } else {
                    Ok(value)
                }
            }
            Ok(Err(error)) => match (state.hit.take(), denied) {
                (Some(limit), _) => Err(CallError::Limit { plugin: label, limit }),
                (None, Some(what)) => Err(CallError::Denied { plugin: label, what }),
                (None, None) => Err(CallError::Plugin { plugin: label, error: super::boundary::plugin_error(error) }),
            },
            Err(trap) => {
                let limit = state.hit.take().or_else(|| match trap.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => Some(LimitHit::Deadline { ms: plugin.limits.deadline_ms }),
                    Some(Trap::StackOverflow) => Some(LimitHit::Stack),
                    _ => None,
                });
                match limit {
                    Some(limit) => Err(CallError::Limit { plugin: label, limit }),
                    None => {
                        let last_error = logs.iter().rev().find(|l| l.level == "error").map(|l| l.message.clone());
                        let mut message = match trap.downcast_ref::<Trap>() {
                            // Rust (and C) keep large stack frames in linear memory below
                            // the data; recursing past that stack reads out of bounds.
                            Some(Trap::MemoryOutOfBounds) => {
                                "out of bounds memory access (a bug, or recursion overflowing the plugin's own shadow stack)"
                                    .to_string()
                            }
                            Some(t) => t.to_string(),
                            None => format!("{trap:#}"),
                        };
                        if let Some(line) = last_error {
                            message = format!("{message}; last error logged: {line}");
                        }
                        Err(CallError::Trap { plugin: label, message })
                    }
                }
            }
        };
        if let Err(e) = &result {
            if PROVING.get() {
                tracing::debug!(plugin = %e.plugin(), kind = e.kind(), error = %e, "plugin fixture call failed");
            } else {
                tracing::warn!(plugin = %e.plugin(), kind = e.kind(), error = %e, "plugin call failed");
            }
        }
        CallOutcome { result, logs }
    }

    fn wrong_kind(plugin: &LoadedPlugin, expected: PluginKind) -> CallError {
        CallError::WrongKind { plugin: plugin.label.clone(), kind: plugin.kind(), expected }
    }

    /// Evaluates a merchant rule. The clock the plugin can see is frozen at
    /// `context.now`, so the same input always gives the same decision.
    pub fn evaluate(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        order: &latest::Order,
        context: &latest::RuleContext,
    ) -> CallOutcome<latest::RuleDecision> {
        let started = Instant::now();
        let outcome = self.evaluate_unobserved(plugin, config, order, context);
        observe(plugin, "evaluate", started, &outcome);
        outcome
    }

    fn evaluate_unobserved(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        order: &latest::Order,
        context: &latest::RuleContext,
    ) -> CallOutcome<latest::RuleDecision> {
        if !matches!(plugin.pre, Pre::RulesV0_1(_) | Pre::RulesV0_2(_)) {
            return CallOutcome::failed(Self::wrong_kind(plugin, PluginKind::MerchantRules));
        }
        if let Err(e) = Self::check_input(plugin, order.wire_size() + context.wire_size()) {
            return CallOutcome::failed(e);
        }
        // `types` is shared by both versions: a 0.1.0 rule takes and returns the latest
        // types as they are.
        let mut outcome =
            self.run(plugin, config, Clock::FixedAt(context.now), &self.http, |store| match &plugin.pre {
                Pre::RulesV0_1(pre) => {
                    let bindings = pre.instantiate(&mut *store)?;
                    bindings.cashback_plugin_rules().call_evaluate(store, order, context)
                }
                Pre::RulesV0_2(pre) => {
                    let bindings = pre.instantiate(&mut *store)?;
                    bindings.cashback_plugin_rules().call_evaluate(store, order, context)
                }
                _ => Err(wasmtime::format_err!("not a rule plugin")),
            });
        if let Ok(decision) = &outcome.result
            && let Err(reason) = super::boundary::check_decision(order, decision)
        {
            outcome.result = Err(CallError::InvalidOutput { plugin: plugin.label.clone(), reason });
        }
        outcome
    }

    /// Runs one export of a network adapter (`name`, for the metrics) in a fresh instance.
    fn call_adapter<T: WireSize>(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        http: &HttpClient,
        name: &'static str,
        input_size: u64,
        call: impl FnOnce(&AdapterExports<'_>, &mut Store<PluginState>) -> wasmtime::Result<Result<T, latest::PluginError>>,
    ) -> CallOutcome<T> {
        let started = Instant::now();
        let outcome = (|| {
            if !matches!(plugin.pre, Pre::AdapterV0_1(_) | Pre::AdapterV0_2(_)) {
                return CallOutcome::failed(Self::wrong_kind(plugin, PluginKind::NetworkAdapter));
            }
            if let Err(e) = Self::check_input(plugin, input_size) {
                return CallOutcome::failed(e);
            }
            self.run(plugin, config, Clock::Live, http, |store| match &plugin.pre {
                Pre::AdapterV0_1(pre) => {
                    let bindings = pre.instantiate(&mut *store)?;
                    call(&AdapterExports::V0_1(bindings.cashback_plugin_adapter()), store)
                }
                Pre::AdapterV0_2(pre) => {
                    let bindings = pre.instantiate(&mut *store)?;
                    call(&AdapterExports::V0_2(bindings.cashback_plugin_adapter()), store)
                }
                _ => Err(wasmtime::format_err!("not an adapter plugin")),
            })
        })();
        observe(plugin, name, started, &outcome);
        outcome
    }

    /// Parses an S2S postback with a network adapter.
    pub fn parse_postback(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        request: &latest::PostbackRequest,
    ) -> CallOutcome<Vec<latest::ConversionEvent>> {
        self.call_adapter(plugin, config, &self.http, "parse_postback", request.wire_size(), |a, store| {
            a.parse_postback(store, request)
        })
    }

    /// Fetches one page of a network's report with an adapter.
    pub fn import_page(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        request: &latest::ImportRequest,
    ) -> CallOutcome<latest::Page> {
        self.import_page_with(plugin, config, request, &self.http)
    }

    /// [`import_page`](Self::import_page) with another HTTP client: a fixture's
    /// [`HttpClient::replay`], which answers from recorded exchanges.
    pub fn import_page_with(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        request: &latest::ImportRequest,
        http: &HttpClient,
    ) -> CallOutcome<latest::Page> {
        self.call_adapter(plugin, config, http, "import_page", request.wire_size(), |a, store| {
            a.import_page(store, request)
        })
    }

    /// Renders a partner callback's request with a `partner-callback` plugin, in a fresh
    /// instance with the plugin's limits. The plugin sees no clock of its own: WASI's
    /// clocks stand still at `change.now`, as a rule's do at its evaluation time.
    pub fn render_callback(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        change: &latest::Change,
        endpoint: &latest::CallbackEndpoint,
    ) -> CallOutcome<latest::CallbackRequest> {
        let started = Instant::now();
        let outcome = (|| {
            let Pre::PartnerV0_2(pre) = &plugin.pre else {
                return CallOutcome::failed(Self::wrong_kind(plugin, PluginKind::PartnerCallback));
            };
            if let Err(e) = Self::check_input(plugin, change.wire_size() + endpoint.wire_size()) {
                return CallOutcome::failed(e);
            }
            self.run(plugin, config, Clock::FixedAt(change.now), &self.http, |store| {
                let bindings = pre.instantiate(&mut *store)?;
                bindings.cashback_plugin_callback().call_render(store, change, endpoint)
            })
        })();
        observe(plugin, "render", started, &outcome);
        outcome
    }

    /// Parses an offline report file with an adapter.
    pub fn parse_file(
        &self,
        plugin: &LoadedPlugin,
        config: &PluginConfig,
        name: &str,
        contents: &[u8],
    ) -> CallOutcome<latest::FileResult> {
        let size = (name.len() + contents.len()) as u64;
        self.call_adapter(plugin, config, &self.http, "parse_file", size, |a, store| {
            a.parse_file(store, name, contents)
        })
    }
}

/// Counts a call in the metrics: its time, and its failure's kind.
fn observe<T>(plugin: &LoadedPlugin, call: &'static str, started: Instant, outcome: &CallOutcome<T>) {
    if PROVING.get() {
        return;
    }
    let failure = outcome.result.as_ref().err().map(CallError::kind);
    crate::metrics::plugin_call(&plugin.label.name, &plugin.label.version, call, started.elapsed(), failure);
}

/// Pieces of a call, exposed for the benchmark only: production code always goes
/// through [`PluginRuntime::evaluate`], which instantiates per call.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// A rule instance kept alive across calls.
    pub struct WarmRule {
        store: Store<PluginState>,
        bindings: v0_1::rules_world::MerchantRules,
    }

    impl WarmRule {
        /// Calls `evaluate` on the live instance.
        pub fn evaluate(
            &mut self,
            order: &latest::Order,
            context: &latest::RuleContext,
        ) -> Option<latest::RuleDecision> {
            // Long-lived for the benchmark: push the deadline out before each call.
            self.store.set_epoch_deadline(1_000_000);
            self.bindings.cashback_plugin_rules().call_evaluate(&mut self.store, order, context).ok()?.ok()
        }
    }

    impl PluginRuntime {
        /// Instantiates a rule plugin and keeps the instance.
        pub fn warm_rule(&self, plugin: &LoadedPlugin, config: &PluginConfig) -> Option<WarmRule> {
            let Pre::RulesV0_1(pre) = &plugin.pre else {
                return None;
            };
            let mut store = self.new_store(plugin, config, Clock::FixedAt(0));
            let bindings = pre.instantiate(&mut store).ok()?;
            Some(WarmRule { store, bindings })
        }

        /// Creates a store and instantiates the plugin, then drops both: the per-call
        /// overhead that [`PluginRuntime::evaluate`] adds to the call itself.
        pub fn instantiate_only(&self, plugin: &LoadedPlugin, config: &PluginConfig) -> bool {
            let Pre::RulesV0_1(pre) = &plugin.pre else {
                return false;
            };
            let mut store = self.new_store(plugin, config, Clock::FixedAt(0));
            pre.instantiate(&mut store).is_ok()
        }
    }
}
