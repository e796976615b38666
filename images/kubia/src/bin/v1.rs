//! kubia:v1: "You've hit <hostname>".

fn main() -> std::io::Result<()> {
    kubia::drain_on_sigterm();
    kubia::serve(&kubia::listen_addr(), |host| format!("You've hit {host}\n"))
}
