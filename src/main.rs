fn main() -> std::process::ExitCode {
    zmount::cli::main()
}
