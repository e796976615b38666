//! Node networking. Today: interface facts ([`interfaces`]) and the service CIDR's dead end
//! ([`service_cidr`], over netlink); pod
//! networking (bridge, veths, IPAM) comes with the pod runtime.

pub mod interfaces;
pub mod service_cidr;

/// Opens an rtnetlink connection in the calling thread's network namespace and drives it on
/// the current tokio runtime.
pub fn connect() -> std::io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
