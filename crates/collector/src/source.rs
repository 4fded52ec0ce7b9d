//! Where a host's usage comes from, behind one trait.
//!
//! A source is asked once per minute what it sees. It answers with [`Observation`]s:
//! either a [`Reading`] — a resource as the hypervisor shows it now, with cumulative
//! interface counters, which the agent stamps with the minute and turns into deltas
//! (libvirt, the simulator) — or a finished [`Sample`] from another process, which the
//! agent validates and passes on as it is (a file or stdin of NDJSON samples).
//!
//! - [`libvirt`] (cargo feature `libvirt`): domains polled through libvirt.
//! - [`simulated`]: the fleet simulator's resources on one host, for demos and load.
//! - [`file`]: NDJSON samples appended to a file, or written to stdin.

use std::collections::BTreeMap;

use tally_model::{Minute, ResourceKind, ResourceState, Sample};

pub mod file;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod simulated;

/// Something a host can tell about its resources.
pub trait Source: Send {
    /// What the source shows now, at the end of `minute` (the minute being sampled).
    ///
    /// Errors are per call: the agent reports them, counts them and asks again at the
    /// next tick; a source that cannot see one resource says so in its readings' absence
    /// and logs why rather than failing every resource.
    fn observe(&mut self, minute: Minute) -> Result<Vec<Observation>, SourceError>;

    /// A short name for logs and metrics (`libvirt`, `simulator`, `file`).
    fn name(&self) -> &'static str;

    /// How often to ask: `None` once per minute, for sources the agent stamps with the
    /// minute; `Some` for sources of finished samples, which carry their own minutes.
    fn poll_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the source has nothing more to give, ever (stdin closed): the agent
    /// then ships what it has and stops.
    fn finished(&self) -> bool {
        false
    }

    /// Resources the last [`Self::observe`] saw but made no reading of, by why.
    fn skipped(&self) -> Skipped {
        Skipped::default()
    }

    /// What the source needs to carry on after a restart exactly where it was (a file
    /// offset, simulated counters). Saved in the same fsync as the samples it led to.
    fn checkpoint(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Carries on from a [`Self::checkpoint`] of an earlier run.
    fn restore(&mut self, _checkpoint: serde_json::Value) -> Result<(), SourceError> {
        Ok(())
    }
}

/// One thing a source saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A resource as the hypervisor shows it now; the agent makes the minute's sample.
    Reading(Reading),
    /// A sample another process already made; passed on once it validates.
    Sample(Sample),
    /// Input that is not a sample: kept with where it came from and why it was refused.
    Rejected(Rejected),
}

/// Input a source could not make a sample of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Where it was (`exporter.ndjson:1204`).
    pub location: String,
    pub reason: String,
    /// The input as it was.
    pub input: String,
}

/// A resource as its host shows it at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub resource_id: String,
    pub account_id: String,
    pub kind: ResourceKind,
    pub sku: String,
    pub zone: String,
    pub state: ResourceState,
    pub gpus: u16,
    /// Occupied size of a stored thing (snapshot, volume); 0 otherwise.
    pub size_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// Changes whenever the resource's counters start again from zero (libvirt's domain
    /// id changes at every start; the simulator counts reboots). A counter that goes
    /// down also means a restart; this catches the restart whose new count has already
    /// passed the old one.
    pub incarnation: u64,
    /// Cumulative byte counters, one per network interface.
    pub interfaces: Vec<InterfaceCounters>,
}

/// One network interface's cumulative byte counters, as the resource sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The device (`vnet3`), unique within the resource.
    pub device: String,
    /// What the device carries traffic to: the libvirt network or bridge it is attached
    /// to (`public`, `br-private`), or a destination address or CIDR prefix where the
    /// host counts per destination. The traffic configuration maps it to internal or
    /// external (see [`crate::traffic`]).
    pub attachment: String,
    /// Bytes the resource sent: libvirt's `tx_bytes`, as `virDomainInterfaceStats` reports
    /// the guest's view (it swaps the host tap device's receive and transmit counters).
    pub sent_bytes: u64,
    /// Bytes the resource received.
    pub received_bytes: u64,
}

/// Resources a source saw but did not bill, by why (the agent's metrics show them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Not Tally's to bill (a libvirt domain without Tally's metadata).
    pub unmanaged: u64,
    /// Meant to be billed, but its description is broken: alert on any.
    pub misconfigured: u64,
    /// Not readable this minute.
    pub unreadable: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("libvirt at '{uri}': {detail}")]
    Libvirt { uri: String, detail: String },
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("{0}")]
    Other(String),
}
