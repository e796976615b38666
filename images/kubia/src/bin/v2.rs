//! kubia:v2: says it is v2, for rolling-update demonstrations.

fn main() -> std::io::Result<()> {
    kubia::exit_on_sigterm();
    kubia::serve("0.0.0.0:8080", |host| {
        format!("This is v2 running in pod {host}\n")
    })
}
