//! Domains polled through libvirt (cargo feature `libvirt`).
//!
//! Every minute the source lists all domains of the connection, active and inactive, and
//! reads each one's live XML, state and interface counters. What Tally bills comes from
//! the domain's `<metadata>` element in Tally's namespace ([`METADATA_NAMESPACE`]):
//!
//! ```xml
//! <metadata>
//!   <tally:resource xmlns:tally="https://tally.dev/xmlns/libvirt/1">
//!     <tally:account>acme</tally:account>   <!-- required -->
//!     <tally:sku>cx22</tally:sku>           <!-- required -->
//!     <tally:zone>fsn1</tally:zone>         <!-- required -->
//!     <tally:kind>server</tally:kind>       <!-- optional; default: gpu_server or server -->
//!     <tally:id>srv-4711</tally:id>         <!-- optional; default: the domain UUID -->
//!     <tally:state>frozen</tally:state>     <!-- optional; overrides the power state -->
//!     <tally:label name="os">debian</tally:label>  <!-- any number -->
//!   </tally:resource>
//! </metadata>
//! ```
//!
//! Operators set it with `virsh metadata <domain> https://tally.dev/xmlns/libvirt/1
//! --key tally --edit` (add `--config` to keep it across restarts).
//!
//! - A domain **without** that element is not Tally's to bill: it is skipped, counted in
//!   [`SkippedDomains::unmanaged`] and logged once at warn.
//! - A domain whose element is **broken** (a required field missing or empty, an unknown
//!   kind, state or element) is skipped, counted in [`SkippedDomains::misconfigured`] and
//!   logged at error, naming the domain and the field; it is logged again when the problem
//!   changes. Unknown elements are refused rather than ignored so that a typo such as
//!   `<tally:stat>frozen</tally:stat>` cannot bill an archived server as running.
//! - A domain that cannot be read (it vanished between listing and reading, libvirt
//!   failed on it) is skipped for this minute, counted in [`SkippedDomains::unreadable`]
//!   and logged at warn. The other domains are read as usual.
//!
//! The state is libvirt's power state — running, blocked, paused and pmsuspended are
//! [`ResourceState::Running`] (the domain still holds its host's CPUs and memory),
//! shutoff, shutdown and crashed are [`ResourceState::Stopped`] — unless `<tally:state>`
//! overrides it. The vCPUs online and the memory are the labels `vcpus` and `memory_mib`
//! (tariffs group by labels; they override labels of those names in the metadata). GPUs
//! are the domain's `<hostdev mode='subsystem'>` devices of type `pci` (passthrough) and
//! `mdev` (vGPU), whatever they are: a passed-through NIC belongs in an
//! `<interface type='hostdev'>`, which does not count, and any other PCI device would be
//! billed as a GPU.
//!
//! Interfaces and their cumulative counters are reported for active domains only; the
//! incarnation is the domain id, which libvirt gives anew at every start (0 while
//! inactive), so the agent's counters stage knows when counters started again from zero.

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_model::{Minute, ResourceKind, ResourceState};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{InterfaceCounters, Observation, Reading, Skipped, Source, SourceError};

/// The XML namespace of Tally's element in a domain's `<metadata>`.
pub const METADATA_NAMESPACE: &str = "https://tally.dev/xmlns/libvirt/1";

/// Domains of one libvirt connection, read once per minute.
pub struct LibvirtSource {
    uri: String,
    connection: Connect,
    skipped: SkippedDomains,
    /// What was last logged about a domain that is not billed (by UUID): `unmanaged` or
    /// the metadata problem, so each is logged once rather than every minute.
    reported: HashMap<String, String>,
}

/// Domains the last [`Source::observe`] listed but made no reading of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkippedDomains {
    /// Without Tally's metadata: not billed by Tally.
    pub unmanaged: usize,
    /// With Tally's metadata, but broken: not billed until it is fixed (alert on any).
    pub misconfigured: usize,
    /// Not readable this minute (vanished, or libvirt failed on it).
    pub unreadable: usize,
}

impl LibvirtSource {
    /// Connects to libvirt at `uri` (`qemu:///system`, `test:///path/to/node.xml`).
    ///
    /// Turns off libvirt's default error handler for the whole process, which would
    /// print every error to stderr: errors reach the logs through this source instead.
    pub fn open(uri: &str) -> Result<Self, SourceError> {
        virt::error::clear_error_callback();
        let connection = connect(uri)?;
        Ok(Self {
            uri: uri.to_owned(),
            connection,
            skipped: SkippedDomains::default(),
            reported: HashMap::new(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The connection the source reads through, for tools and tests that act on the same
    /// domains: with the test driver and a node XML file, every connection has its own
    /// copy of the domains, so a state change only shows through this one.
    pub fn connection(&self) -> &Connect {
        &self.connection
    }

    /// The domains the last observation skipped, by reason.
    pub fn skipped_domains(&self) -> SkippedDomains {
        self.skipped
    }

    /// Every domain, active and inactive. A failure reconnects once (libvirtd restarted
    /// and took the connection with it) before it is the caller's error.
    fn list_domains(&mut self) -> Result<Vec<Domain>, SourceError> {
        let flags = sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE | sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE;
        let first_error = match self.connection.list_all_domains(flags) {
            Ok(domains) => return Ok(domains),
            Err(error) => error,
        };
        tracing::warn!(
            uri = %self.uri,
            error = %first_error,
            "listing libvirt domains failed; reconnecting"
        );
        let mut fresh_connection = connect(&self.uri).map_err(|reconnect_error| {
            self.error(format!(
                "listing domains failed ({first_error}) and reconnecting failed: {reconnect_error}"
            ))
        })?;
        std::mem::swap(&mut self.connection, &mut fresh_connection);
        let mut old_connection = fresh_connection;
        // The old connection is dead or broken; closing it only releases it.
        let _ = old_connection.close();
        self.connection.list_all_domains(flags).map_err(|error| {
            self.error(format!(
                "listing domains failed after reconnecting: {error}"
            ))
        })
    }

    /// One reading per billed domain; the others are counted and logged.
    fn read_domains(&mut self, domains: &[Domain]) -> Vec<Observation> {
        let mut skipped = SkippedDomains::default();
        let mut observations = Vec::with_capacity(domains.len());
        let mut listed = HashSet::with_capacity(domains.len());
        for domain in domains {
            let name = domain.get_name().unwrap_or_else(|_| "?".to_owned());
            let uuid = domain.get_uuid_string().unwrap_or_else(|_| name.clone());
            listed.insert(uuid.clone());
            match read_domain(domain, &name, &uuid) {
                Ok(Seen::Billed(reading)) => {
                    if self.reported.remove(&uuid).is_some() {
                        tracing::info!(
                            domain = %name,
                            %uuid,
                            "domain has usable tally metadata now: billed from this minute"
                        );
                    }
                    observations.push(Observation::Reading(reading));
                }
                Ok(Seen::Unmanaged) => {
                    skipped.unmanaged += 1;
                    if self.first_report(&uuid, "unmanaged") {
                        tracing::warn!(
                            domain = %name,
                            %uuid,
                            namespace = METADATA_NAMESPACE,
                            "domain has no tally metadata: not billed by tally"
                        );
                    }
                }
                Ok(Seen::Misconfigured(problem)) => {
                    skipped.misconfigured += 1;
                    let problem = problem.to_string();
                    if self.first_report(&uuid, &problem) {
                        tracing::error!(
                            domain = %name,
                            %uuid,
                            %problem,
                            "domain's tally metadata is broken: not billed until it is fixed \
                             (virsh metadata <domain> {METADATA_NAMESPACE} --key tally --edit)"
                        );
                    }
                }
                Err(error) => {
                    skipped.unreadable += 1;
                    tracing::warn!(domain = %name, %uuid, %error, "domain not read this minute");
                }
            }
        }
        self.reported.retain(|uuid, _| listed.contains(uuid));
        self.skipped = skipped;
        observations
    }

    /// Whether `what` is news about the domain (and remembers it).
    fn first_report(&mut self, uuid: &str, what: &str) -> bool {
        if self
            .reported
            .get(uuid)
            .is_some_and(|reported| reported == what)
        {
            return false;
        }
        self.reported.insert(uuid.to_owned(), what.to_owned());
        true
    }

    fn error(&self, detail: String) -> SourceError {
        SourceError::Libvirt {
            uri: self.uri.clone(),
            detail,
        }
    }
}

impl Source for LibvirtSource {
    fn observe(&mut self, _minute: Minute) -> Result<Vec<Observation>, SourceError> {
        let domains = self.list_domains()?;
        Ok(self.read_domains(&domains))
    }

    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn skipped(&self) -> Skipped {
        let skipped = self.skipped_domains();
        Skipped {
            unmanaged: skipped.unmanaged as u64,
            misconfigured: skipped.misconfigured as u64,
            unreadable: skipped.unreadable as u64,
        }
    }
}

impl Drop for LibvirtSource {
    fn drop(&mut self) {
        // libvirt's connections are reference counted and not closed by the binding's
        // own drop: without this every reopened source would leak one.
        if let Err(error) = self.connection.close() {
            tracing::debug!(uri = %self.uri, %error, "closing the libvirt connection failed");
        }
    }
}

fn connect(uri: &str) -> Result<Connect, SourceError> {
    let error = |detail: String| SourceError::Libvirt {
        uri: uri.to_owned(),
        detail,
    };
    if uri.contains('\0') {
        return Err(error("the URI contains a NUL character".to_owned()));
    }
    Connect::open(Some(uri))
        .map_err(|libvirt_error| error(format!("cannot connect: {libvirt_error}")))
}

/// What one domain turned out to be.
enum Seen {
    Billed(Reading),
    Unmanaged,
    Misconfigured(MetadataError),
}

/// Why a domain could not be read this minute.
#[derive(Debug, thiserror::Error)]
enum DomainError {
    #[error("{0}")]
    Libvirt(#[from] virt::error::Error),
    #[error("its XML does not parse: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("its XML has no usable <{element}>: {problem}")]
    Description {
        element: &'static str,
        problem: String,
    },
}

/// A broken `<tally:resource>`: which field and what is wrong with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("<tally:{field}> {problem}")]
struct MetadataError {
    field: String,
    problem: String,
}

impl MetadataError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

fn read_domain(domain: &Domain, name: &str, uuid: &str) -> Result<Seen, DomainError> {
    let (power_state, _reason) = domain.get_state()?;
    // The live XML of an active domain, the persistent one of an inactive domain: the
    // id, devices and device names in it belong together, whatever happens meanwhile.
    let xml = domain.get_xml_desc(0)?;
    let document = roxmltree::Document::parse(&xml)?;
    let definition = document.root_element();
    let metadata = match TallyMetadata::of(definition) {
        Ok(Some(metadata)) => metadata,
        Ok(None) => return Ok(Seen::Unmanaged),
        Err(problem) => return Ok(Seen::Misconfigured(problem)),
    };
    let description = DomainDescription::of(definition)?;

    let mut interfaces = Vec::new();
    if description.id.is_some() {
        for interface in &description.interfaces {
            match read_counters(domain, interface) {
                Ok(counters) => interfaces.push(counters),
                // Left out for this minute: the agent keeps the interface's last reading,
                // so its bytes count with the next reading that succeeds.
                Err(error) => tracing::warn!(
                    domain = %name,
                    %uuid,
                    device = interface.device.as_deref().unwrap_or("?"),
                    %error,
                    "interface counters not read this minute"
                ),
            }
        }
    }

    let kind = metadata.kind.unwrap_or(if description.gpus > 0 {
        ResourceKind::GpuServer
    } else {
        ResourceKind::Server
    });
    let state = metadata
        .state
        .unwrap_or_else(|| power_state_of(power_state, description.id.is_some()));
    let mut labels = metadata.labels;
    labels.insert("vcpus".to_owned(), description.vcpus.to_string());
    labels.insert("memory_mib".to_owned(), description.memory_mib.to_string());
    Ok(Seen::Billed(Reading {
        resource_id: metadata.resource_id.unwrap_or_else(|| uuid.to_owned()),
        account_id: metadata.account_id,
        kind,
        sku: metadata.sku,
        zone: metadata.zone,
        state,
        gpus: description.gpus,
        size_bytes: 0,
        labels,
        incarnation: description.id.map_or(0, u64::from),
        interfaces,
    }))
}

/// libvirt's power state as Tally's: does the domain hold its host's resources?
fn power_state_of(state: sys::virDomainState, active: bool) -> ResourceState {
    match state {
        sys::VIR_DOMAIN_RUNNING
        | sys::VIR_DOMAIN_BLOCKED
        | sys::VIR_DOMAIN_PAUSED
        | sys::VIR_DOMAIN_PMSUSPENDED => ResourceState::Running,
        sys::VIR_DOMAIN_SHUTOFF | sys::VIR_DOMAIN_SHUTDOWN | sys::VIR_DOMAIN_CRASHED => {
            ResourceState::Stopped
        }
        // No state, or one newer than this code: an active domain holds its resources.
        _ if active => ResourceState::Running,
        _ => ResourceState::Stopped,
    }
}

/// One interface's counters, as the guest sees them.
///
/// `virDomainInterfaceStats` reports from the domain's point of view: the host-side tap
/// device's receive counter is what the guest transmitted, and libvirt swaps the two
/// before returning them (`virNetDevTapInterfaceStats(..., swapped)`, "the returned
/// statistics are always from domain POV"; for macvtap, whose counters already are the
/// guest's view, it does not swap). So `tx_bytes` is what the VM sent — billed as
/// outbound — and `rx_bytes` what it received.
fn read_counters(
    domain: &Domain,
    interface: &InterfaceDescription,
) -> Result<InterfaceCounters, DomainError> {
    let Some(device) = &interface.device else {
        return Err(DomainError::Description {
            element: "interface",
            problem: "neither <target dev> nor <mac address>".to_owned(),
        });
    };
    let stats = domain.interface_stats(device)?;
    // libvirt reports -1 for a counter the hypervisor does not keep.
    let counter = |value: i64, name: &str| {
        u64::try_from(value).map_err(|_| DomainError::Description {
            element: "interface",
            problem: format!("libvirt has no {name} counter for {device} ({value})"),
        })
    };
    Ok(InterfaceCounters {
        device: device.clone(),
        attachment: interface.attachment.clone(),
        sent_bytes: counter(stats.tx_bytes, "tx_bytes")?,
        received_bytes: counter(stats.rx_bytes, "rx_bytes")?,
    })
}

/// What Tally's metadata element says about a domain.
#[derive(Debug, PartialEq, Eq)]
struct TallyMetadata {
    resource_id: Option<String>,
    account_id: String,
    sku: String,
    zone: String,
    kind: Option<ResourceKind>,
    state: Option<ResourceState>,
    labels: BTreeMap<String, String>,
}

impl TallyMetadata {
    /// `None` for a domain without Tally's element.
    fn of(definition: roxmltree::Node<'_, '_>) -> Result<Option<Self>, MetadataError> {
        let Some(metadata) = child_element(definition, "metadata") else {
            return Ok(None);
        };
        let mut ours = metadata.children().filter(|node| {
            node.is_element() && node.tag_name().namespace() == Some(METADATA_NAMESPACE)
        });
        let Some(resource) = ours.next() else {
            return Ok(None);
        };
        if resource.tag_name().name() != "resource" {
            return Err(MetadataError::new(
                resource.tag_name().name(),
                "is not Tally's element: expected <tally:resource>",
            ));
        }
        if ours.next().is_some() {
            return Err(MetadataError::new("resource", "appears more than once"));
        }

        let mut resource_id = None;
        let mut account_id = None;
        let mut sku = None;
        let mut zone = None;
        let mut kind = None;
        let mut state = None;
        let mut labels = BTreeMap::new();
        for element in resource.children().filter(roxmltree::Node::is_element) {
            let field = element.tag_name().name();
            if element.tag_name().namespace() != Some(METADATA_NAMESPACE) {
                return Err(MetadataError::new(
                    "resource",
                    format!("holds <{field}> of another namespace"),
                ));
            }
            let value = element.text().map(str::trim).unwrap_or_default();
            match field {
                "id" => set_once(&mut resource_id, field, non_empty(field, value)?)?,
                "account" => set_once(&mut account_id, field, non_empty(field, value)?)?,
                "sku" => set_once(&mut sku, field, non_empty(field, value)?)?,
                "zone" => set_once(&mut zone, field, non_empty(field, value)?)?,
                "kind" => {
                    let parsed = ResourceKind::parse(value).ok_or_else(|| {
                        let known = ResourceKind::ALL.map(ResourceKind::as_str).join(", ");
                        MetadataError::new(field, format!("'{value}' is no kind (known: {known})"))
                    })?;
                    set_once(&mut kind, field, parsed)?;
                }
                "state" => {
                    let parsed = ResourceState::parse(value).ok_or_else(|| {
                        let known = ResourceState::ALL.map(ResourceState::as_str).join(", ");
                        MetadataError::new(field, format!("'{value}' is no state (known: {known})"))
                    })?;
                    set_once(&mut state, field, parsed)?;
                }
                "label" => {
                    let label_name = element.attribute("name").map(str::trim).unwrap_or_default();
                    if label_name.is_empty() {
                        return Err(MetadataError::new(field, "has no name attribute"));
                    }
                    if labels
                        .insert(label_name.to_owned(), value.to_owned())
                        .is_some()
                    {
                        return Err(MetadataError::new(
                            field,
                            format!("name='{label_name}' appears more than once"),
                        ));
                    }
                }
                _ => {
                    return Err(MetadataError::new(
                        field,
                        "is unknown (known: account, sku, zone, kind, id, state, label)",
                    ));
                }
            }
        }
        let required = |value: Option<String>, field: &str| {
            value.ok_or_else(|| MetadataError::new(field, "is missing"))
        };
        Ok(Some(Self {
            resource_id,
            account_id: required(account_id, "account")?,
            sku: required(sku, "sku")?,
            zone: required(zone, "zone")?,
            kind,
            state,
            labels,
        }))
    }
}

fn non_empty(field: &str, value: &str) -> Result<String, MetadataError> {
    if value.is_empty() {
        return Err(MetadataError::new(field, "is empty"));
    }
    Ok(value.to_owned())
}

fn set_once<T>(slot: &mut Option<T>, field: &str, value: T) -> Result<(), MetadataError> {
    if slot.is_some() {
        return Err(MetadataError::new(field, "appears more than once"));
    }
    *slot = Some(value);
    Ok(())
}

/// What the domain XML says about the domain's hardware.
#[derive(Debug, PartialEq, Eq)]
struct DomainDescription {
    /// libvirt's id while the domain is active.
    id: Option<u32>,
    vcpus: u32,
    memory_mib: u64,
    gpus: u16,
    interfaces: Vec<InterfaceDescription>,
}

#[derive(Debug, PartialEq, Eq)]
struct InterfaceDescription {
    /// What `virDomainInterfaceStats` knows the interface by: the host-side device
    /// (`<target dev>`), else its MAC address, which libvirt accepts too.
    device: Option<String>,
    /// The network (`<source network>`), bridge (`<source bridge>`) or host device
    /// (`<source dev>`, macvtap) it is attached to, else its type (`user`).
    attachment: String,
}

impl DomainDescription {
    fn of(definition: roxmltree::Node<'_, '_>) -> Result<Self, DomainError> {
        let id = match definition.attribute("id") {
            None => None,
            Some(id) => Some(id.parse::<u32>().map_err(|_| DomainError::Description {
                element: "domain",
                problem: format!("id='{id}' is no domain id"),
            })?),
        };

        let vcpu = child_element(definition, "vcpu").ok_or(DomainError::Description {
            element: "vcpu",
            problem: "missing".to_owned(),
        })?;
        // `current` is how many are online when fewer than the maximum are.
        let vcpu_text = vcpu
            .attribute("current")
            .or(vcpu.text())
            .unwrap_or_default()
            .trim();
        let vcpus = vcpu_text
            .parse::<u32>()
            .map_err(|_| DomainError::Description {
                element: "vcpu",
                problem: format!("'{vcpu_text}' is no number of vCPUs"),
            })?;

        let memory = child_element(definition, "memory").ok_or(DomainError::Description {
            element: "memory",
            problem: "missing".to_owned(),
        })?;
        let memory_mib = memory_mib_of(memory)?;

        let devices = child_element(definition, "devices");
        let device_elements = |name: &'static str| {
            devices
                .into_iter()
                .flat_map(|devices| devices.children())
                .filter(move |node| node.is_element() && node.tag_name().name() == name)
        };
        let gpu_count = device_elements("hostdev")
            .filter(|hostdev| {
                hostdev.attribute("mode") == Some("subsystem")
                    && matches!(hostdev.attribute("type"), Some("pci" | "mdev"))
            })
            .count();
        let gpus = u16::try_from(gpu_count).map_err(|_| DomainError::Description {
            element: "hostdev",
            problem: format!("{gpu_count} GPUs"),
        })?;

        let interfaces = device_elements("interface")
            .map(|interface| {
                let target =
                    child_element(interface, "target").and_then(|target| target.attribute("dev"));
                let mac = child_element(interface, "mac").and_then(|mac| mac.attribute("address"));
                let source = child_element(interface, "source");
                // A libvirt network's live source names its bridge too: the network first.
                let attachment = ["network", "bridge", "dev"]
                    .into_iter()
                    .find_map(|attribute| source.and_then(|source| source.attribute(attribute)))
                    .or(interface.attribute("type"))
                    .unwrap_or_default();
                InterfaceDescription {
                    device: target.or(mac).map(str::to_owned),
                    attachment: attachment.to_owned(),
                }
            })
            .collect();

        Ok(Self {
            id,
            vcpus,
            memory_mib,
            gpus,
            interfaces,
        })
    }
}

/// `<memory unit='KiB'>4194304</memory>` in MiB (libvirt writes KiB; its schema allows
/// the other units too).
fn memory_mib_of(memory: roxmltree::Node<'_, '_>) -> Result<u64, DomainError> {
    let unit = memory.attribute("unit").unwrap_or("KiB");
    let text = memory.text().unwrap_or_default().trim();
    let problem = |problem: String| DomainError::Description {
        element: "memory",
        problem,
    };
    let bytes_per_unit: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return Err(problem(format!("unit='{unit}' is no unit libvirt knows"))),
    };
    let amount = text
        .parse::<u64>()
        .map_err(|_| problem(format!("'{text}' is no amount")))?;
    let bytes = amount
        .checked_mul(bytes_per_unit)
        .ok_or_else(|| problem(format!("{text} {unit} is more than a u64 of bytes")))?;
    Ok(bytes >> 20)
}

fn child_element<'a, 'input>(
    parent: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    parent.children().find(|node| {
        node.is_element() && node.tag_name().name() == name && node.tag_name().namespace().is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `test:///<path>` of the committed node XML, percent-encoded as a URI path.
    fn node_uri() -> String {
        // Cargo's variable at run time, not `env!`: a target directory shared by checkouts
        // in different places keeps a test binary built in another one.
        let path = format!(
            "{}/tests/data/libvirt-node.xml",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
        );
        let mut uri = String::from("test://");
        for byte in path.bytes() {
            if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
                uri.push(char::from(byte));
            } else {
                uri.push_str(&format!("%{byte:02X}"));
            }
        }
        uri
    }

    fn observe_by_resource(source: &mut LibvirtSource) -> BTreeMap<String, Reading> {
        let minute: Minute = "2026-11-01T00:00:00Z".parse().expect("minute");
        let observations = source.observe(minute).expect("observes");
        let mut readings = BTreeMap::new();
        for observation in observations {
            let Observation::Reading(reading) = observation else {
                panic!("libvirt only makes readings: {observation:?}");
            };
            let resource_id = reading.resource_id.clone();
            assert!(
                readings.insert(resource_id, reading).is_none(),
                "one reading per domain"
            );
        }
        readings
    }

    fn domain(source: &LibvirtSource, name: &str) -> Domain {
        Domain::lookup_by_name(source.connection(), name).expect("the domain exists")
    }

    fn uuid_of(index: u8) -> String {
        format!("11111111-0000-4000-8000-0000000000{index:02x}")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn devices(reading: &Reading) -> BTreeMap<&str, &InterfaceCounters> {
        reading
            .interfaces
            .iter()
            .map(|interface| (interface.attachment.as_str(), interface))
            .collect()
    }

    /// Counters of the same incarnation never go down (the test driver's grow with time).
    fn assert_counters_grew(before: &Reading, after: &Reading) {
        assert_eq!(before.incarnation, after.incarnation);
        assert_eq!(before.interfaces.len(), after.interfaces.len());
        for (old, new) in before.interfaces.iter().zip(&after.interfaces) {
            assert_eq!(old.device, new.device);
            assert!(new.sent_bytes >= old.sent_bytes, "{old:?} → {new:?}");
            assert!(
                new.received_bytes >= old.received_bytes,
                "{old:?} → {new:?}"
            );
        }
    }

    #[test]
    fn domains_are_read_as_libvirt_shows_them_while_their_states_change() {
        let uri = node_uri();
        let mut source = LibvirtSource::open(&uri).expect("the test driver opens the node XML");

        // Round 1: the node as the XML defines it.
        let first = observe_by_resource(&mut source);
        assert_eq!(
            source.skipped_domains(),
            SkippedDomains {
                unmanaged: 1,
                misconfigured: 2,
                unreadable: 0
            }
        );
        let mut billed: Vec<String> = [1, 3, 4, 5, 6, 7, 8].map(uuid_of).into();
        billed.push("srv-gpu-1".to_owned());
        billed.sort();
        assert_eq!(first.keys().cloned().collect::<Vec<_>>(), billed);

        let web = &first[&uuid_of(1)];
        let web_id = domain(&source, "web-1").get_id().expect("web-1 runs");
        assert_eq!(
            Reading {
                interfaces: Vec::new(),
                ..web.clone()
            },
            Reading {
                resource_id: uuid_of(1),
                account_id: "acme".to_owned(),
                kind: ResourceKind::Server,
                sku: "cx22".to_owned(),
                zone: "fsn1".to_owned(),
                state: ResourceState::Running,
                gpus: 0,
                size_bytes: 0,
                labels: labels(&[
                    ("os", "debian"),
                    ("project", "shop"),
                    ("vcpus", "2"),
                    ("memory_mib", "4096"),
                ]),
                incarnation: u64::from(web_id),
                interfaces: Vec::new(),
            }
        );
        let web_devices = devices(web);
        assert_eq!(
            web_devices.keys().copied().collect::<Vec<_>>(),
            ["private", "public"]
        );
        assert_eq!(web_devices["public"].device, "tapweb1pub");
        // No <target dev> in the XML: the test driver names it when the domain starts.
        assert!(!web_devices["private"].device.is_empty());
        assert_ne!(web_devices["private"].device, "tapweb1pub");
        for interface in &web.interfaces {
            // The test driver derives both counters from one clock reading, rx = t/10 and
            // tx = t/20: received is twice sent, which pins which counter is which.
            assert!(interface.sent_bytes > 0, "{interface:?}");
            assert_eq!(
                interface.received_bytes / 2,
                interface.sent_bytes,
                "{interface:?}"
            );
        }

        let gpu = &first["srv-gpu-1"];
        assert_eq!(
            (
                gpu.kind,
                gpu.gpus,
                gpu.account_id.as_str(),
                gpu.sku.as_str(),
                gpu.state
            ),
            (
                ResourceKind::GpuServer,
                2,
                "ml-lab",
                "gx11",
                ResourceState::Running
            )
        );
        assert_eq!(
            gpu.labels,
            labels(&[("vcpus", "8"), ("memory_mib", "65536")])
        );
        assert_eq!(gpu.interfaces.len(), 1);
        assert_eq!(
            (
                gpu.interfaces[0].device.as_str(),
                gpu.interfaces[0].attachment.as_str()
            ),
            ("tapgpu1", "br-public")
        );
        assert_ne!(gpu.incarnation, 0);

        let db_stopped = Reading {
            resource_id: uuid_of(3),
            account_id: "acme".to_owned(),
            kind: ResourceKind::Server,
            sku: "cx32".to_owned(),
            zone: "nbg1".to_owned(),
            state: ResourceState::Stopped,
            gpus: 0,
            size_bytes: 0,
            labels: labels(&[("vcpus", "4"), ("memory_mib", "8192")]),
            incarnation: 0,
            interfaces: Vec::new(),
        };
        assert_eq!(first[&uuid_of(3)], db_stopped);
        let archive = &first[&uuid_of(4)];
        assert_eq!(
            (
                archive.state,
                archive.incarnation,
                archive.interfaces.len(),
                archive.zone.as_str()
            ),
            (ResourceState::Frozen, 0, 0, "hel1")
        );
        for (index, state) in [
            (5, ResourceState::Running), // blocked
            (6, ResourceState::Stopped), // shutdown
            (7, ResourceState::Stopped), // crashed
            (8, ResourceState::Running), // pmsuspended
        ] {
            assert_eq!(first[&uuid_of(index)].state, state, "domain {index}");
        }

        // The skipped domains, and why.
        let seen = |name: &str| {
            let handle = domain(&source, name);
            let uuid = handle.get_uuid_string().expect("uuid");
            read_domain(&handle, name, &uuid).expect("readable")
        };
        assert!(matches!(seen("scratch"), Seen::Unmanaged));
        let Seen::Misconfigured(problem) = seen("broken-sku") else {
            panic!("broken-sku is misconfigured");
        };
        assert_eq!(problem, MetadataError::new("sku", "is missing"));
        let Seen::Misconfigured(problem) = seen("broken-kind") else {
            panic!("broken-kind is misconfigured");
        };
        assert_eq!(problem.field, "kind");
        assert!(
            problem.to_string().contains("'baremetal' is no kind"),
            "{problem}"
        );

        // Round 2: through the source's own connection, web-1 pauses, gpu-1 is pulled
        // off, db-1 and the archived server start, and broken-sku's metadata is fixed.
        domain(&source, "web-1").suspend().expect("suspends");
        domain(&source, "gpu-1").destroy().expect("destroys");
        domain(&source, "db-1").create().expect("starts");
        domain(&source, "archive-1").create().expect("starts");
        domain(&source, "broken-sku")
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(
                    "<resource><account>acme</account><sku>cx11</sku><zone>fsn1</zone></resource>",
                ),
                Some("tally"),
                Some(METADATA_NAMESPACE),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            )
            .expect("sets metadata");

        // Every test:///file connection has a copy of its own: another one sees none of it.
        let mut other_connection = Connect::open(Some(&uri)).expect("opens");
        let (other_state, _) = Domain::lookup_by_name(&other_connection, "web-1")
            .expect("web-1")
            .get_state()
            .expect("state");
        assert_eq!(other_state, sys::VIR_DOMAIN_RUNNING);
        other_connection.close().expect("closes");

        let second = observe_by_resource(&mut source);
        assert_eq!(
            source.skipped_domains(),
            SkippedDomains {
                unmanaged: 1,
                misconfigured: 1,
                unreadable: 0
            }
        );
        let paused_web = &second[&uuid_of(1)];
        assert_eq!(paused_web.state, ResourceState::Running);
        assert_counters_grew(web, paused_web);

        let pulled_gpu = &second["srv-gpu-1"];
        assert_eq!(
            (
                pulled_gpu.state,
                pulled_gpu.incarnation,
                pulled_gpu.interfaces.len()
            ),
            (ResourceState::Stopped, 0, 0)
        );
        assert_eq!(
            (pulled_gpu.kind, pulled_gpu.gpus),
            (ResourceKind::GpuServer, 2)
        );

        let db = &second[&uuid_of(3)];
        let db_id = domain(&source, "db-1").get_id().expect("db-1 runs");
        assert_eq!(
            Reading {
                interfaces: Vec::new(),
                ..db.clone()
            },
            Reading {
                state: ResourceState::Running,
                incarnation: u64::from(db_id),
                ..db_stopped.clone()
            }
        );
        assert_eq!(db.interfaces.len(), 1);
        assert_eq!(db.interfaces[0].attachment, "private");
        assert!(db.interfaces[0].sent_bytes > 0 && db.interfaces[0].received_bytes > 0);

        let running_archive = &second[&uuid_of(4)];
        assert_eq!(running_archive.state, ResourceState::Frozen);
        assert_ne!(running_archive.incarnation, 0);
        assert_eq!(
            devices(running_archive).keys().copied().collect::<Vec<_>>(),
            ["public"]
        );

        let fixed = &second[&uuid_of(10)];
        assert_eq!(
            (fixed.sku.as_str(), fixed.state, fixed.kind),
            ("cx11", ResourceState::Running, ResourceKind::Server)
        );

        // Round 3: web-1 resumes and shuts down; gpu-1 starts again, as a new incarnation.
        domain(&source, "web-1").resume().expect("resumes");
        domain(&source, "web-1").shutdown().expect("shuts down");
        domain(&source, "gpu-1").create().expect("starts");
        let third = observe_by_resource(&mut source);
        let stopped_web = &third[&uuid_of(1)];
        assert_eq!(
            (
                stopped_web.state,
                stopped_web.incarnation,
                stopped_web.interfaces.len()
            ),
            (ResourceState::Stopped, 0, 0)
        );
        let restarted_gpu = &third["srv-gpu-1"];
        assert_eq!(restarted_gpu.state, ResourceState::Running);
        assert_ne!(restarted_gpu.incarnation, 0);
        assert_ne!(restarted_gpu.incarnation, gpu.incarnation);
        assert_eq!(restarted_gpu.interfaces.len(), 1);
        assert_counters_grew(db, &third[&uuid_of(3)]);
    }

    #[test]
    fn a_domain_gone_between_listing_and_reading_is_skipped_and_the_others_are_read() {
        let mut source = LibvirtSource::open(&node_uri()).expect("opens");
        let flags = sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE | sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE;
        let listed = source.connection().list_all_domains(flags).expect("lists");
        let all_readings = listed.len() - 3;
        // Undefined while running, it only lives until it stops: then it is gone.
        let web = domain(&source, "web-1");
        web.undefine().expect("undefines");
        web.destroy().expect("destroys");

        let observations = source.read_domains(&listed);
        assert_eq!(observations.len(), all_readings - 1);
        assert_eq!(source.skipped_domains().unreadable, 1);
        assert!(observations.iter().all(|observation| !matches!(
            observation,
            Observation::Reading(reading) if reading.resource_id == uuid_of(1)
        )));
    }

    #[test]
    fn a_uri_libvirt_cannot_open_is_a_libvirt_error_naming_it() {
        let uri = "test:///nonexistent/tally-node.xml";
        let Err(error) = LibvirtSource::open(uri) else {
            panic!("a missing node file does not open");
        };
        assert!(matches!(&error, SourceError::Libvirt { uri: named, .. } if named == uri));
        assert!(error.to_string().contains("cannot connect"), "{error}");
    }

    fn parse_metadata(resource: &str) -> Result<Option<TallyMetadata>, MetadataError> {
        let xml = format!("<domain><metadata>{resource}</metadata></domain>");
        let document = roxmltree::Document::parse(&xml).expect("test XML parses");
        TallyMetadata::of(document.root_element())
    }

    fn tally(fields: &str) -> String {
        format!(r#"<tally:resource xmlns:tally="{METADATA_NAMESPACE}">{fields}</tally:resource>"#)
    }

    const REQUIRED: &str = concat!(
        "<tally:account>acme</tally:account>",
        "<tally:sku>cx22</tally:sku>",
        "<tally:zone>fsn1</tally:zone>"
    );

    #[test]
    fn metadata_reads_every_field_and_refuses_what_it_does_not_know() {
        let full = parse_metadata(&tally(&format!(
            "{REQUIRED}<tally:kind>addon</tally:kind><tally:id> lb-7 </tally:id>\
             <tally:state>frozen</tally:state><tally:label name='tier'>gold</tally:label>"
        )))
        .expect("parses")
        .expect("is Tally's");
        assert_eq!(
            full,
            TallyMetadata {
                resource_id: Some("lb-7".to_owned()),
                account_id: "acme".to_owned(),
                sku: "cx22".to_owned(),
                zone: "fsn1".to_owned(),
                kind: Some(ResourceKind::Addon),
                state: Some(ResourceState::Frozen),
                labels: labels(&[("tier", "gold")]),
            }
        );
        // Another prefix for the same namespace is the same element.
        let other_prefix = format!(
            r#"<t:resource xmlns:t="{METADATA_NAMESPACE}">
                 <t:account>a</t:account><t:sku>s</t:sku><t:zone>z</t:zone>
               </t:resource>"#
        );
        assert!(parse_metadata(&other_prefix).expect("parses").is_some());
        // Other namespaces' metadata, or none: not Tally's.
        assert_eq!(
            parse_metadata("<nova:instance xmlns:nova='urn:nova'/>"),
            Ok(None)
        );
        assert_eq!(parse_metadata(""), Ok(None));

        for (fields, field, problem) in [
            (
                "<tally:sku>cx22</tally:sku><tally:zone>fsn1</tally:zone>",
                "account",
                "is missing",
            ),
            (
                "<tally:account> </tally:account><tally:sku>x</tally:sku><tally:zone>z</tally:zone>",
                "account",
                "is empty",
            ),
            (
                &format!("{REQUIRED}<tally:sku>cx32</tally:sku>"),
                "sku",
                "appears more than once",
            ),
            (
                &format!("{REQUIRED}<tally:stat>frozen</tally:stat>"),
                "stat",
                "is unknown",
            ),
            (
                &format!("{REQUIRED}<tally:state>archived</tally:state>"),
                "state",
                "'archived' is no state",
            ),
            (
                &format!("{REQUIRED}<tally:label>x</tally:label>"),
                "label",
                "has no name attribute",
            ),
            (
                &format!(
                    "{REQUIRED}<tally:label name='a'>1</tally:label><tally:label name='a'>2</tally:label>"
                ),
                "label",
                "name='a' appears more than once",
            ),
            (
                &format!("{REQUIRED}<sku>cx22</sku>"),
                "resource",
                "holds <sku> of another namespace",
            ),
        ] {
            let error = parse_metadata(&tally(fields)).expect_err(fields);
            assert_eq!(error.field, field, "{fields}");
            assert!(error.problem.starts_with(problem), "{fields}: {error}");
        }
        let twice = format!("{}{}", tally(REQUIRED), tally(REQUIRED));
        assert_eq!(
            parse_metadata(&twice),
            Err(MetadataError::new("resource", "appears more than once"))
        );
    }

    #[test]
    fn the_description_names_interfaces_by_target_else_mac_and_counts_gpus() {
        let xml = "<domain type='kvm' id='12'>
              <memory unit='MiB'>1536</memory><vcpu placement='static'>3</vcpu>
              <devices>
                <interface type='network'>
                  <mac address='52:54:00:aa:bb:01'/>
                  <source network='public' portid='0d4c' bridge='virbr1'/>
                  <target dev='vnet7'/>
                </interface>
                <interface type='direct'>
                  <mac address='52:54:00:aa:bb:02'/>
                  <source dev='eno1' mode='bridge'/>
                </interface>
                <interface type='user'/>
                <hostdev mode='subsystem' type='pci'/>
                <hostdev mode='capabilities' type='storage'/>
              </devices>
            </domain>";
        let document = roxmltree::Document::parse(xml).expect("parses");
        let description = DomainDescription::of(document.root_element()).expect("describes");
        assert_eq!(
            description,
            DomainDescription {
                id: Some(12),
                vcpus: 3,
                memory_mib: 1536,
                gpus: 1,
                interfaces: vec![
                    InterfaceDescription {
                        device: Some("vnet7".to_owned()),
                        attachment: "public".to_owned(),
                    },
                    InterfaceDescription {
                        device: Some("52:54:00:aa:bb:02".to_owned()),
                        attachment: "eno1".to_owned(),
                    },
                    InterfaceDescription {
                        device: None,
                        attachment: "user".to_owned(),
                    },
                ],
            }
        );
        let inactive = "<domain type='kvm'><memory>2097152</memory><vcpu>1</vcpu></domain>";
        let document = roxmltree::Document::parse(inactive).expect("parses");
        let description = DomainDescription::of(document.root_element()).expect("describes");
        assert_eq!(
            (description.id, description.memory_mib, description.gpus),
            (None, 2048, 0)
        );
    }
}
