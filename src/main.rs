//! The `pushbox` binary: everything lives in `pushbox::cli`.

fn main() -> std::process::ExitCode {
    pushbox::cli::main()
}
