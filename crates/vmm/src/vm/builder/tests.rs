use super::*;

fn cfg() -> VmConfig {
    VmConfig::new("/nonexistent/kernel")
}

#[test]
fn bad_sizes_are_refused_before_kvm() {
    let mut c = cfg();
    c.cpus = 0;
    assert!(matches!(check_inputs(&c), Err(Error::NoCpus(0))));
    c.cpus = 255;
    assert!(matches!(check_inputs(&c), Err(Error::TooManyCpus { .. })));
    c.cpus = 1;
    c.memory_mib = 0;
    assert!(matches!(check_inputs(&c), Err(Error::Memory(_))));
    c.memory_mib = 1 << 39;
    assert!(matches!(check_inputs(&c), Err(Error::Memory(_))));
    if let Some(host) = config::host_memory_mib() {
        c.memory_mib = host + 1024;
        assert!(matches!(check_inputs(&c), Err(Error::HostMemory { .. })));
    }
}

#[test]
fn missing_files_are_named() {
    let c = cfg();
    let e = check_inputs(&c).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/kernel"), "{e}");
    let mut c = VmConfig::new("/proc/self/exe");
    c.initrd = Some("/nonexistent/initrd".into());
    let e = check_inputs(&c).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/initrd"), "{e}");
    c.initrd = Some("/tmp".into());
    let e = check_inputs(&c).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // The kernel is read in place (seeked), so it must be a file too.
    let c = VmConfig::new("/tmp");
    let e = check_inputs(&c).unwrap_err().to_string();
    assert!(
        e.contains("/tmp") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn profile_follows_the_host_unless_forced() {
    let mut c = cfg();
    let pvm: Vec<&str> = [MACHINE_PARAMS, EMULATION_PARAMS].concat();
    assert_eq!(choose_profile(&c, HostKind::Pvm).1, pvm);
    assert!(choose_profile(&c, HostKind::Pvm).0.emulated);
    assert_eq!(choose_profile(&c, HostKind::Vmx).1, MACHINE_PARAMS);
    assert!(!choose_profile(&c, HostKind::Svm).0.emulated);
    c.profile = ProfileChoice::Native;
    assert_eq!(choose_profile(&c, HostKind::Pvm).1, MACHINE_PARAMS);
    c.profile = ProfileChoice::Emulated;
    assert!(choose_profile(&c, HostKind::Vmx).0.emulated);
}
