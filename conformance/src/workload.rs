//! The workload baked into the conformance root image as `/.supermachine/run-workload`, in the
//! shape supermachine's bake writes it (`export` lines, `cd`, `exec` of the image's command).
//!
//! supermachine's `/.supermachine/launch` evaluates the `export` lines into the agent's own
//! environment, starts the script in the background and records its pid in
//! `/run/supermachine-workload.pid`. The workload below announces itself, ticks once a second,
//! and answers SIGTERM by writing a marker, so the suite can see that `signal` reached it.

/// Written by the workload when it starts: `<pid> <$CONFORMANCE_WL> <cwd>`.
pub const STARTED: &str = "/tmp/conformance-wl.started";
/// Written by the workload's TERM trap.
pub const TERMINATED: &str = "/tmp/conformance-wl.term";
/// The variable exported by the script (and so into the agent's environment).
pub const ENV_NAME: &str = "CONFORMANCE_WL";
/// Its value.
pub const ENV_VALUE: &str = "from run-workload";
/// The workload's working directory.
pub const WORKDIR: &str = "/tmp";
/// supermachine's launch script records the workload's pid here (the guest contract's path).
pub use supermachine_guest::paths::WORKLOAD_PID as PID_FILE;

/// The script's text.
pub fn script() -> String {
    let body = format!(
        "trap \"echo term > {TERMINATED}; exit 0\" TERM; \
         echo \"$$ ${ENV_NAME} $(pwd)\" > {STARTED}; \
         while :; do date +%s > /tmp/conformance-wl.tick; sleep 1; done"
    );
    format!(
        "#!/.supermachine/busybox sh\n\
         export {ENV_NAME}='{ENV_VALUE}'\n\
         cd '{WORKDIR}' 2>/dev/null || true\n\
         exec '/bin/sh' '-c' '{body}'\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_valid_sh_in_supermachine_shape() {
        let s = script();
        assert!(s.starts_with("#!/.supermachine/busybox sh\nexport CONFORMANCE_WL="));
        let p = std::env::temp_dir().join(format!("conf-wl-{}", std::process::id()));
        std::fs::write(&p, &s).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg(&p)
            .status()
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(st.success(), "sh -n rejected:\n{s}");
    }
}
