//! kubia:v1: "You've hit <hostname>".

fn main() -> std::io::Result<()> {
    kubia::exit_on_sigterm();
    kubia::serve("0.0.0.0:8080", |host| format!("You've hit {host}\n"))
}
