fn main() -> std::process::ExitCode {
    calico_migrate::cli::main()
}
