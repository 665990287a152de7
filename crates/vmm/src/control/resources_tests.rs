use super::*;

fn kernel() -> String {
    "/proc/self/exe".into()
}

#[test]
fn machine_config_is_checked_and_patched() {
    let mut r = VmResources::default();
    assert_eq!(r.machine.vcpu_count, 1);
    assert_eq!(r.machine.mem_size_mib, 128);
    let m = |v, mib| MachineConfig {
        vcpu_count: v,
        mem_size_mib: mib,
        ..MachineConfig::default()
    };
    assert!(r
        .set_machine_config(m(0, 128))
        .unwrap_err()
        .contains("vCPU count"));
    assert!(r
        .set_machine_config(m(255, 128))
        .unwrap_err()
        .contains("vCPU count"));
    assert!(r
        .set_machine_config(m(1, 0))
        .unwrap_err()
        .contains("memory size"));
    let smt = MachineConfig {
        smt: true,
        ..m(2, 64)
    };
    assert!(r.set_machine_config(smt).unwrap_err().contains("SMT"));
    let t = MachineConfig {
        cpu_template: Some("T2".into()),
        ..m(2, 64)
    };
    assert!(r
        .set_machine_config(t)
        .unwrap_err()
        .contains("CPU template T2"));
    assert_eq!(
        r.machine,
        MachineConfig::default(),
        "refusals change nothing"
    );
    r.set_machine_config(m(2, 64)).unwrap();
    let patched = r.machine.apply(MachineConfigUpdate {
        mem_size_mib: Some(96),
        ..Default::default()
    });
    assert_eq!((patched.vcpu_count, patched.mem_size_mib), (2, 96));
}

#[test]
fn drives_replace_by_id_and_one_root_is_allowed() {
    let mut r = VmResources::default();
    let d = |id: &str, root| Drive {
        drive_id: id.into(),
        path_on_host: Some("/dev/null".into()),
        is_root_device: root,
        ..Drive::default()
    };
    r.set_drive(d("a", true)).unwrap();
    r.set_drive(d("b", false)).unwrap();
    assert!(r
        .set_drive(d("c", true))
        .unwrap_err()
        .contains("root block device already exists"));
    r.set_drive(Drive {
        is_read_only: true,
        ..d("b", false)
    })
    .unwrap();
    assert_eq!(r.drives.len(), 2);
    assert!(r.drives[1].is_read_only);
    let missing = Drive {
        path_on_host: Some("/nonexistent".into()),
        ..d("x", false)
    };
    assert!(r.set_drive(missing).unwrap_err().contains("/nonexistent"));
    let limited = Drive {
        rate_limiter: Some(serde_json::json!({"bandwidth": {"size": 1}})),
        ..d("y", false)
    };
    assert!(r.set_drive(limited).unwrap_err().contains("rate limiters"));
    let engine = Drive {
        io_engine: Some("Turbo".into()),
        ..d("z", false)
    };
    assert!(r.set_drive(engine).unwrap_err().contains("io_engine Turbo"));
    for (engine, want) in [
        (None, IoEngine::Auto),
        (Some("Sync"), IoEngine::Sync),
        (Some("Async"), IoEngine::Async),
    ] {
        let d = Drive {
            io_engine: engine.map(str::to_owned),
            ..d("z", false)
        };
        assert_eq!(d.engine(), Ok(want));
        r.set_drive(d).unwrap();
    }
}

#[test]
fn instance_start_config_puts_the_root_drive_first_and_on_the_cmdline() {
    let mut r = VmResources::default();
    assert!(r
        .to_vm_config(&VmConfig::new(""))
        .unwrap_err()
        .contains("kernel"));
    r.set_boot_source(BootSource {
        kernel_image_path: kernel(),
        initrd_path: None,
        boot_args: Some("console=ttyS0 -- init-arg".into()),
    })
    .unwrap();
    for (id, root, engine) in [("data", false, Some("Sync")), ("rootfs", true, None)] {
        r.set_drive(Drive {
            drive_id: id.into(),
            path_on_host: Some("/dev/null".into()),
            is_root_device: root,
            is_read_only: root,
            io_engine: engine.map(str::to_owned),
            ..Drive::default()
        })
        .unwrap();
    }
    r.set_entropy(Entropy::default()).unwrap();
    let cfg = r.to_vm_config(&VmConfig::new("")).unwrap();
    assert_eq!(cfg.disks[0].id.as_deref(), Some("rootfs"));
    assert!(cfg.disks[0].read_only);
    assert_eq!(cfg.disks[0].engine, IoEngine::Auto);
    assert_eq!(cfg.disks[1].engine, IoEngine::Sync);
    assert_eq!(
        cfg.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda ro -- init-arg")
    );
    assert!(cfg.rng);
    assert_eq!(cfg.kernel, PathBuf::from(kernel()));
}

#[test]
fn boot_source_and_vsock_and_net_are_checked() {
    let mut r = VmResources::default();
    let e = r
        .set_boot_source(BootSource {
            kernel_image_path: "/nonexistent/k".into(),
            ..BootSource::default()
        })
        .unwrap_err();
    assert!(
        e.contains("kernel file cannot be opened: /nonexistent/k"),
        "{e}"
    );
    assert!(r
        .set_vsock(Vsock {
            guest_cid: 1,
            uds_path: "/v".into(),
            vsock_id: None
        })
        .is_err());
    assert!(r
        .set_vsock(Vsock {
            guest_cid: 1 << 40,
            uds_path: "/v".into(),
            vsock_id: None
        })
        .unwrap_err()
        .contains("guest_cid"));
    let n = |id: &str, tap: &str| NetworkInterface {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        ..NetworkInterface::default()
    };
    r.set_net(n("e0", "tap0")).unwrap();
    assert!(r
        .set_net(n("e1", "tap0"))
        .unwrap_err()
        .contains("already in use"));
    assert!(r.set_net(n("e2", "a-very-long-tap-name")).is_err());
}

#[test]
fn a_full_config_round_trips_through_json() {
    let mut r = VmResources::default();
    r.set_boot_source(BootSource {
        kernel_image_path: kernel(),
        ..BootSource::default()
    })
    .unwrap();
    r.set_vsock(Vsock {
        guest_cid: 3,
        uds_path: "/v".into(),
        vsock_id: None,
    })
    .unwrap();
    let text = serde_json::to_string(&r.full_config()).unwrap();
    assert!(
        text.contains("\"boot-source\"") && text.contains("\"machine-config\""),
        "{text}"
    );
    let back: FullVmConfiguration = serde_json::from_str(&text).unwrap();
    assert_eq!(VmResources::from_full_config(back).unwrap(), r);
}
