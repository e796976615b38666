//! Admission steps, after Kubernetes' admission plugins of the same names: on pod create,
//! [`tolerations`] (DefaultTolerationSeconds) and [`service_account`] (ServiceAccount: the
//! account, its image pull secrets and the token volume); on every write by a node's
//! credential, [`node_restriction`] (NodeRestriction: only its own objects); and the checks of
//! [`certificates`] (CertificateApproval, CertificateSigning, CertificateSubjectRestriction);
//! after validation of pods, workloads and namespaces, [`pod_security`] (PodSecurity: the Pod
//! Security Standards by namespace labels).

pub mod certificates;
pub mod node_restriction;
pub mod pod_security;
pub mod service_account;
pub mod tolerations;

pub use tolerations::DefaultTolerations;

use std::sync::atomic::{AtomicBool, Ordering};

/// Which optional plugins run (kube-apiserver's `--disable-admission-plugins`).
#[derive(Debug)]
pub struct Plugins {
    service_account: AtomicBool,
    certificate_subject_restriction: AtomicBool,
    pod_security_enabled: AtomicBool,
    /// PodSecurity's configuration (`--pod-security-default`,
    /// `--pod-security-exempt-namespaces`).
    pub pod_security: pod_security::PodSecurity,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            service_account: AtomicBool::new(true),
            certificate_subject_restriction: AtomicBool::new(true),
            pod_security_enabled: AtomicBool::new(true),
            pod_security: pod_security::PodSecurity::default(),
        }
    }
}

impl Plugins {
    /// The plugins that can be turned off, by Kubernetes' names.
    pub const OPTIONAL: &'static [&'static str] = &[
        "ServiceAccount",
        "CertificateSubjectRestriction",
        "PodSecurity",
    ];

    /// Turns off the plugin `name`. Kubernetes' own integration tests run without the
    /// ServiceAccount plugin when nothing creates accounts; so do skiff's component tests.
    pub fn disable(&self, name: &str) -> Result<(), String> {
        match name {
            "ServiceAccount" => self.service_account.store(false, Ordering::Relaxed),
            "CertificateSubjectRestriction" => self
                .certificate_subject_restriction
                .store(false, Ordering::Relaxed),
            "PodSecurity" => self.pod_security_enabled.store(false, Ordering::Relaxed),
            other => {
                return Err(format!(
                    "unknown or required admission plugin {other:?} (can disable: {})",
                    Self::OPTIONAL.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Whether the ServiceAccount plugin runs.
    pub fn service_account(&self) -> bool {
        self.service_account.load(Ordering::Relaxed)
    }

    /// Whether CertificateSubjectRestriction runs (no `system:masters` client CSRs).
    pub fn certificate_subject_restriction(&self) -> bool {
        self.certificate_subject_restriction.load(Ordering::Relaxed)
    }

    /// Whether PodSecurity runs.
    pub fn pod_security_enabled(&self) -> bool {
        self.pod_security_enabled.load(Ordering::Relaxed)
    }
}
