//! The eBPF mode: socket-level load balancing with cgroup sock_addr programs, loaded with aya.
//!
//! [`EbpfDatapath::start`] loads the programs (from the object `cargo xtask build-ebpf` built,
//! embedded at compile time, or a file), attaches `connect4`, `sendmsg4`, `recvmsg4` and
//! `getpeername4` to a cgroup2 directory, and pins maps and links under a bpffs directory.
//! Because the links are pinned, the programs stay attached when the agent exits: routing
//! survives an agent restart, and the next `start` reuses the pinned maps (their services are
//! read back), attaches the new programs and only then drops the old links, so there is no
//! moment without translation. [`cleanup`] removes the pins, which detaches everything.
//!
//! With external interfaces configured, the tc programs `nodeport_ingress`/`nodeport_egress`
//! are attached there too ([`nodeport`]): NodePorts and service IPs for clients outside the
//! node, with connection tracking and SNAT for backends on other nodes.

mod batch;
pub mod maglev;
pub mod nodeport;
pub mod service_table;
pub mod sys;

use std::fs::File;
use std::io;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError, MapInfo, MapType};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use skiff_ebpf_common::{
    maps, AffinityKey, AffinityValue, Backend, CtKey, CtValue, MaglevTable, RevNat, ServiceKey,
    ServiceValue, SockRevNatKey, SockRevNatValue, MAX_AFFINITY, MAX_CT, MAX_ENTRIES,
    MAX_EXT_IFACES, MAX_MAGLEV_SERVICES, MAX_NODE_ADDRS, MAX_SERVICE_SLOTS, MAX_SOCK_REV_NAT,
};

use self::service_table::{LbMaps, ServiceTable};
use super::{Datapath, Frontend, ProxyError, Service};

/// The programs, by the names their functions have in ebpf/programs.
pub const PROGRAMS: [&str; 4] = ["connect4", "sendmsg4", "recvmsg4", "getpeername4"];

/// Where the agent pins its maps and links by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/skiff";

/// The eBPF object built by `cargo xtask build-ebpf`, when it existed at compile time.
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(skiff_ebpf_object)]
    {
        Some(aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT_PATH")))
    }
    #[cfg(not(skiff_ebpf_object))]
    {
        None
    }
}

/// Where and how to run the eBPF datapath.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// The cgroup2 directory the programs attach to; sockets of processes in it or below it are
    /// load-balanced. The agent uses the cgroup2 mount itself (every process on the node).
    pub cgroup: PathBuf,
    /// The bpffs directory for pinned maps (`<dir>/<map>`) and links (`<dir>/links/<program>`).
    pub pin_dir: PathBuf,
    /// An object file to load instead of the embedded one.
    pub object: Option<PathBuf>,
    /// The node's external interfaces, where the NodePort programs attach (none: NodePorts
    /// only work from processes on the node, through the socket programs).
    pub nodeport_interfaces: Vec<String>,
}

impl EbpfConfig {
    /// The node-wide defaults: the cgroup2 mount from /proc/self/mountinfo and
    /// [`DEFAULT_PIN_DIR`].
    pub fn node_defaults() -> Result<Self, ProxyError> {
        Ok(Self {
            cgroup: sys::cgroup2_root()?,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            object: None,
            nodeport_interfaces: Vec::new(),
        })
    }
}

/// What a pinned map must look like to be reused.
struct MapSpec {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

const fn spec<K, V>(name: &'static str, map_type: MapType, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
        max_entries,
    }
}

const MAP_SPECS: [MapSpec; 9] = [
    spec::<ServiceKey, ServiceValue>(maps::SERVICES, MapType::Hash, MAX_SERVICE_SLOTS),
    spec::<u32, Backend>(maps::BACKENDS, MapType::Hash, MAX_ENTRIES),
    spec::<u16, RevNat>(maps::REVERSE_NAT, MapType::Hash, MAX_ENTRIES),
    spec::<SockRevNatKey, SockRevNatValue>(maps::REVERSE_SK, MapType::LruHash, MAX_SOCK_REV_NAT),
    spec::<AffinityKey, AffinityValue>(maps::AFFINITY, MapType::LruHash, MAX_AFFINITY),
    spec::<u16, MaglevTable>(maps::MAGLEV, MapType::Hash, MAX_MAGLEV_SERVICES),
    spec::<CtKey, CtValue>(maps::CT, MapType::LruHash, MAX_CT),
    spec::<u32, u32>(maps::NODE_ADDRS, MapType::Hash, MAX_NODE_ADDRS),
    spec::<u32, u32>(maps::EXT_IFACES, MapType::Hash, MAX_EXT_IFACES),
];

/// Refuses pinned maps of another layout: the programs would read them wrongly.
fn check_pinned_maps(pin_dir: &Path) -> Result<(), ProxyError> {
    for spec in &MAP_SPECS {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| ProxyError::Map {
            name: spec.name,
            source,
        })?;
        let found = (
            info.map_type().ok(),
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        let want = (
            Some(spec.map_type),
            spec.key_size,
            spec.value_size,
            spec.max_entries,
        );
        if found != want {
            return Err(ProxyError::IncompatiblePin {
                path,
                detail: format!(
                    "type, key size, value size, max entries: found {found:?}, want {want:?}"
                ),
            });
        }
    }
    Ok(())
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ProxyError + 'a {
    move |source| ProxyError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The eBPF service datapath of a node (or of a cgroup, in tests).
#[derive(Debug)]
pub struct EbpfDatapath {
    table: ServiceTable<AyaMaps>,
    config: EbpfConfig,
    program_ids: Vec<u32>,
}

impl EbpfDatapath {
    /// Loads and attaches the programs, reusing pinned maps (and so the services) an earlier
    /// agent left, and replacing its links.
    pub fn start(config: EbpfConfig) -> Result<Self, ProxyError> {
        sys::ensure_bpffs(&config.pin_dir)?;
        let links = links_dir(&config.pin_dir);
        std::fs::create_dir_all(&links).map_err(io_err("creating", &links))?;
        check_pinned_maps(&config.pin_dir)?;

        let file_bytes;
        let object: &[u8] = match &config.object {
            Some(path) => {
                file_bytes = std::fs::read(path).map_err(|source| ProxyError::ReadObject {
                    path: path.clone(),
                    source,
                })?;
                &file_bytes
            }
            None => embedded_object().ok_or(ProxyError::NoObject)?,
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&config.pin_dir)
            .load(object)?;

        let cgroup = File::open(&config.cgroup).map_err(io_err("opening", &config.cgroup))?;
        let mut program_ids = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            program_ids.push(attach_and_pin(&mut ebpf, name, &cgroup, &links)?);
        }

        let ifaces = nodeport::resolve(&config.nodeport_interfaces)?;
        nodeport::write_node_maps(&mut ebpf, &ifaces)?;
        program_ids.extend(nodeport::attach(&mut ebpf, &ifaces, &links)?);

        let maps = AyaMaps::take(&mut ebpf)?;
        let table = ServiceTable::restore(maps)?;
        tracing::info!(
            cgroup = %config.cgroup.display(),
            pins = %config.pin_dir.display(),
            nodeport_interfaces = ?config.nodeport_interfaces,
            services = table.services().len(),
            "eBPF service datapath attached"
        );
        // Dropping `ebpf` closes the program fds; the pinned links keep the programs alive.
        Ok(Self {
            table,
            config,
            program_ids,
        })
    }

    /// The kernel ids of the programs this instance attached ([`PROGRAMS`], then the tc
    /// programs of [`nodeport::TC_PROGRAMS`] if it attached to interfaces).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EbpfConfig {
        &self.config
    }

    /// The bookkeeping over the maps (ids, for diagnostics and tests).
    pub fn table(&self) -> &ServiceTable<AyaMaps> {
        &self.table
    }
}

impl Datapath for EbpfDatapath {
    fn upsert_service(&mut self, service: &Service) -> Result<(), ProxyError> {
        self.table.upsert_service(service)
    }

    fn upsert_services(&mut self, services: &[Service]) -> Result<(), ProxyError> {
        self.table.upsert_services(services)
    }

    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), ProxyError> {
        self.table.delete_service(frontend)
    }

    fn services(&self) -> Vec<Service> {
        self.table.services()
    }
}

/// Loads and attaches one program, pins its link, and only then removes the link an earlier
/// agent pinned, so that one of them always translates (both running at once is harmless: the
/// second sees a backend address, not a VIP).
fn attach_and_pin(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    links: &Path,
) -> Result<u32, ProxyError> {
    let program_err = |source| ProxyError::Program { name, source };
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(ProxyError::MissingProgram(name))?
        .try_into()
        .map_err(program_err)?;
    prog.load().map_err(program_err)?;
    let id = prog.info().map_err(program_err)?.id();
    // On kernels >= 5.7 aya attaches with a bpf_link, which always allows several programs
    // per hook (the kernel rejects flags for cgroup links): the old and the new link coexist
    // during a restart, and other cgroup programs (a CNI's) keep working.
    let link_id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_err)?;
    let link = prog.take_link(link_id).map_err(program_err)?;
    let path = links.join(name);
    let link: FdLink = link.try_into().map_err(|source| ProxyError::Link {
        path: path.clone(),
        source,
    })?;
    replace_pin(link, &links.join(name))?;
    Ok(id)
}

/// Pins `link` at `path`, replacing (and so detaching) a link pinned there before only after
/// the new one is in place.
fn replace_pin(link: FdLink, path: &Path) -> Result<(), ProxyError> {
    let mut fresh = path.as_os_str().to_owned();
    fresh.push("_new");
    let fresh = PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let pinned = link.pin(&fresh).map_err(|source| ProxyError::Pin {
        path: fresh.clone(),
        source,
    })?;
    // Rename over the old pin: the old link loses its last reference and detaches, after the
    // new one is attached, and no moment passes without a pinned link.
    let old = pinned_link_id(path);
    std::fs::rename(&fresh, path).map_err(io_err("renaming", &fresh))?;
    drop(pinned);
    wait_links_released(old.as_slice());
    Ok(())
}

/// Removes everything [`EbpfDatapath::start`] pinned under `pin_dir`: the links (which detaches
/// the programs) and the maps (which frees them once no program uses them). Missing pins are
/// fine, so it can run after a failed start or twice.
pub fn cleanup(pin_dir: &Path) -> Result<(), ProxyError> {
    let links = links_dir(pin_dir);
    let mut ids = Vec::new();
    // Every pinned link: the cgroup programs' and the tc programs' of each interface.
    match std::fs::read_dir(&links) {
        Ok(entries) => {
            for entry in entries {
                let file = entry.map_err(io_err("listing", &links))?.path();
                ids.extend(pinned_link_id(&file));
                remove_if_present(&file)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("listing", &links)(e)),
    }
    wait_links_released(&ids);
    remove_dir_if_present(&links)?;
    for spec in &MAP_SPECS {
        remove_if_present(&pin_dir.join(spec.name))?;
    }
    remove_dir_if_present(pin_dir)
}

/// A pinned link's kernel ids: the link's and its program's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkIds {
    link: u32,
    program: u32,
}

/// The kernel ids of a pinned link, if `path` is one.
fn pinned_link_id(path: &Path) -> Option<LinkIds> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    link.info().ok().map(|info| LinkIds {
        link: info.id(),
        program: info.program_id(),
    })
}

/// Waits (up to a few seconds) until the kernel has released these links and freed their
/// programs. Removing a link's last pin releases it from a workqueue, not at once, and the
/// link's id disappears just *before* its program is detached; so the wait is for the program,
/// which goes only after the detach (its pinned link was its last reference). Waiting makes
/// "cleanup returned" mean "the programs are detached", and a restart replace its programs
/// before it reports success.
fn wait_links_released(ids: &[LinkIds]) {
    if ids.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let alive = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .any(|l| ids.iter().any(|i| i.link == l.id()))
            || aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .any(|p| ids.iter().any(|i| i.program == p.id()));
        if !alive {
            return;
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                ?ids,
                "links or their programs still present 5 s after their pins were removed \
                 (does another process hold the programs?)"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether `pin_dir` holds a pinned datapath (links).
pub fn is_pinned(pin_dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .any(|name| links_dir(pin_dir).join(name).exists())
}

fn remove_if_present(path: &Path) -> Result<(), ProxyError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), ProxyError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// The lb4 maps in the kernel.
///
/// Backend, reverse-NAT and service writes are buffered and written with batch updates by
/// [`LbMaps::flush`] (backends first, then reverse NAT, then services, each in the order
/// given, so an entry never refers to one not yet written); a delete or a Maglev write flushes
/// first, so the kernel sees every change in the order [`ServiceTable`] made it.
#[derive(Debug)]
pub struct AyaMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u16, RevNat>,
    maglev: HashMap<MapData, u16, MaglevTable>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pending_services: Vec<(ServiceKey, ServiceValue)>,
    pending_backends: Vec<(u32, Backend)>,
    pending_rev_nat: Vec<(u16, RevNat)>,
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, ProxyError> {
    let map: Map = ebpf.take_map(name).ok_or(ProxyError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| ProxyError::Map { name, source })
}

fn open_pinned_map<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, ProxyError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

impl AyaMaps {
    /// Opens the maps a running (or exited) datapath pinned in `pin_dir`, without loading or
    /// attaching programs: for tools that inspect or change services from outside the agent.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, ProxyError> {
        check_pinned_maps(pin_dir)?;
        Ok(Self {
            services: open_pinned_map(pin_dir, maps::SERVICES)?,
            backends: open_pinned_map(pin_dir, maps::BACKENDS)?,
            rev_nat: open_pinned_map(pin_dir, maps::REVERSE_NAT)?,
            maglev: open_pinned_map(pin_dir, maps::MAGLEV)?,
            affinity: open_pinned_map(pin_dir, maps::AFFINITY)?,
            pending_services: Vec::new(),
            pending_backends: Vec::new(),
            pending_rev_nat: Vec::new(),
        })
    }

    fn take(ebpf: &mut Ebpf) -> Result<Self, ProxyError> {
        Ok(Self {
            services: take_map(ebpf, maps::SERVICES)?,
            backends: take_map(ebpf, maps::BACKENDS)?,
            rev_nat: take_map(ebpf, maps::REVERSE_NAT)?,
            maglev: take_map(ebpf, maps::MAGLEV)?,
            affinity: take_map(ebpf, maps::AFFINITY)?,
            pending_services: Vec::new(),
            pending_backends: Vec::new(),
            pending_rev_nat: Vec::new(),
        })
    }
}

/// Writes `entries` into `map` with batch updates, entry by entry where the kernel cannot
/// batch (the error then names the entry that failed).
fn write_batch<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &mut HashMap<MapData, K, V>,
    entries: &[(K, V)],
) -> Result<(), ProxyError> {
    let fd = map.map().fd().as_fd();
    let done = match batch::update(fd, entries) {
        Ok(()) => return Ok(()),
        // Whatever the kernel wrote stays written; the rest goes one by one, which also gives
        // the failing entry aya's error (a full map, say).
        Err((done, e)) if batch::unsupported(&e) => done,
        Err((done, e)) => {
            tracing::debug!(map = name, done, error = %e, "batch update stopped; writing one by one");
            done
        }
    };
    for (k, v) in &entries[done.min(entries.len())..] {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ProxyError {
    move |source| ProxyError::Map { name, source }
}

/// Deleting a key that is not there is fine.
fn removed(name: &'static str, r: Result<(), MapError>) -> Result<(), ProxyError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {
            Ok(())
        }
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        r => r.map_err(map_err(name)),
    }
}

fn collect<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, ProxyError> {
    map.iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err(name))
}

impl LbMaps for AyaMaps {
    fn flush(&mut self) -> Result<(), ProxyError> {
        // Taken out before writing: a failed flush is reported, not retried with stale entries
        // (the next sync writes the services again).
        let backends = std::mem::take(&mut self.pending_backends);
        let rev_nat = std::mem::take(&mut self.pending_rev_nat);
        let services = std::mem::take(&mut self.pending_services);
        write_batch(maps::BACKENDS, &mut self.backends, &backends)?;
        write_batch(maps::REVERSE_NAT, &mut self.rev_nat, &rev_nat)?;
        write_batch(maps::SERVICES, &mut self.services, &services)
    }
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), ProxyError> {
        self.pending_services.push((*key, *value));
        Ok(())
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), ProxyError> {
        self.flush()?;
        removed(maps::SERVICES, self.services.remove(key))
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, ProxyError> {
        collect(maps::SERVICES, &self.services)
    }
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), ProxyError> {
        self.pending_backends.push((id, *backend));
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), ProxyError> {
        self.flush()?;
        removed(maps::BACKENDS, self.backends.remove(&id))
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, ProxyError> {
        collect(maps::BACKENDS, &self.backends)
    }
    fn put_rev_nat(&mut self, id: u16, value: &RevNat) -> Result<(), ProxyError> {
        self.pending_rev_nat.push((id, *value));
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), ProxyError> {
        self.flush()?;
        removed(maps::REVERSE_NAT, self.rev_nat.remove(&id))
    }
    fn rev_nat_ids(&self) -> Result<Vec<u16>, ProxyError> {
        self.rev_nat
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::REVERSE_NAT))
    }
    fn put_maglev(&mut self, id: u16, table: &MaglevTable) -> Result<(), ProxyError> {
        // The table names backend ids: they are written first.
        self.flush()?;
        self.maglev
            .insert(id, table, 0)
            .map_err(map_err(maps::MAGLEV))
    }
    fn delete_maglev(&mut self, id: u16) -> Result<(), ProxyError> {
        self.flush()?;
        removed(maps::MAGLEV, self.maglev.remove(&id))
    }
    fn maglev_ids(&self) -> Result<Vec<u16>, ProxyError> {
        // Keys only: the 64 KiB tables need not be copied out.
        self.maglev
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::MAGLEV))
    }
    fn affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, ProxyError> {
        // The datapath may evict or refresh entries while we iterate: a key that vanished
        // between listing and lookup is skipped rather than failing the walk.
        let mut out = Vec::new();
        for key in self.affinity.keys() {
            let key = key.map_err(map_err(maps::AFFINITY))?;
            match self.affinity.get(&key, 0) {
                Ok(v) => out.push((key, v)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::AFFINITY)(e)),
            }
        }
        Ok(out)
    }
    fn delete_affinity(&mut self, key: &AffinityKey) -> Result<(), ProxyError> {
        self.flush()?;
        removed(maps::AFFINITY, self.affinity.remove(key))
    }
}
