use std::process::ExitCode;

fn main() -> ExitCode {
    pitboss::cli::main()
}
