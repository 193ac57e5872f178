//! `abgate`: see `abgate --help`. All logic lives in the library.

fn main() -> std::process::ExitCode {
    abgate::cli::run()
}
