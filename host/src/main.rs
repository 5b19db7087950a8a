use std::process::ExitCode;

fn main() -> ExitCode {
    cashbackd::cli::main()
}
