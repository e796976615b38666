//! kubia:v2: says it is v2, for rolling-update demonstrations.

fn main() -> std::io::Result<()> {
    kubia::drain_on_sigterm();
    kubia::serve(&kubia::listen_addr(), |host| {
        format!("This is v2 running in pod {host}\n")
    })
}
