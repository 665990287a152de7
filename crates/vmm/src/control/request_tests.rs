use super::*;
use crate::control::snapshot::{SnapshotCreateParams, SnapshotType};

fn err(method: &str, path: &str, body: &str) -> String {
    let r = parse(method, path, body.as_bytes()).unwrap_err();
    assert_eq!(r.status, 400, "{method} {path}");
    let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    v["fault_message"].as_str().unwrap().to_string()
}

#[test]
fn every_route_parses() {
    use ApiRequest::*;
    let p = |m: &str, path: &str, b: &str| parse(m, path, b.as_bytes()).unwrap();
    assert_eq!(p("GET", "/", ""), Describe);
    assert_eq!(p("GET", "/version", ""), Version);
    assert_eq!(p("GET", "/machine-config", ""), GetMachineConfig);
    assert_eq!(p("GET", "/vm/config", ""), GetVmConfig);
    assert!(matches!(
        p(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256}"#
        ),
        PutMachineConfig(MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            ..
        })
    ));
    assert!(matches!(
        p(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"irqchip":"userspace"}"#
        ),
        PutMachineConfig(MachineConfig {
            irqchip: Some(crate::irqchip::IrqchipMode::Userspace),
            ..
        })
    ));
    assert!(matches!(
        p("PATCH", "/machine-config", r#"{"irqchip":"split"}"#),
        PatchMachineConfig(MachineConfigUpdate {
            irqchip: Some(crate::irqchip::IrqchipMode::Split),
            ..
        })
    ));
    assert!(matches!(
        p("PATCH", "/machine-config", r#"{"vcpu_count":4}"#),
        PatchMachineConfig(MachineConfigUpdate {
            vcpu_count: Some(4),
            mem_size_mib: None,
            ..
        })
    ));
    assert!(matches!(
        p("PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#),
        PutBootSource(_)
    ));
    assert!(matches!(
        p(
            "PUT",
            "/drives/root",
            r#"{"drive_id":"root","path_on_host":"/d","is_root_device":true}"#
        ),
        PutDrive(Drive {
            is_root_device: true,
            ..
        })
    ));
    assert_eq!(
        p(
            "PATCH",
            "/drives/root",
            r#"{"drive_id":"root","path_on_host":"/e"}"#
        ),
        PatchDrive("root".into())
    );
    assert!(matches!(
        p(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#
        ),
        PutNet(_)
    ));
    assert!(matches!(
        p("PUT", "/vsock", r#"{"guest_cid":3,"uds_path":"/v"}"#),
        PutVsock(_)
    ));
    assert!(matches!(p("PUT", "/entropy", "{}"), PutEntropy(_)));
    assert!(matches!(
        p("PUT", "/logger", r#"{"level":"Debug"}"#),
        PutLogger(_)
    ));
    assert!(matches!(
        p("PUT", "/metrics", r#"{"metrics_path":"/m"}"#),
        PutMetrics(_)
    ));
    for (a, want) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        assert_eq!(
            p("PUT", "/actions", &format!(r#"{{"action_type":"{a}"}}"#)),
            Action(want)
        );
    }
    assert_eq!(
        p("PATCH", "/vm", r#"{"state":"Paused"}"#),
        PatchVm(VmState::Paused)
    );
    assert_eq!(
        p("PATCH", "/vm", r#"{"state":"Resumed"}"#),
        PatchVm(VmState::Resumed)
    );
    assert_eq!(
        p(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"s","mem_file_path":"m"}"#
        ),
        SnapshotCreate(SnapshotCreateParams {
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
            snapshot_type: SnapshotType::Full,
            version: None,
        })
    );
    assert_eq!(p("GET", "/?x=1", ""), Describe, "a query string is ignored");
}

#[test]
fn bad_bodies_are_refused_with_the_reason() {
    assert!(err("PUT", "/machine-config", r#"{"vcpu_count":2}"#)
        .contains("missing field `mem_size_mib`"));
    assert!(err(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":"2","mem_size_mib":1}"#
    )
    .contains("invalid type"));
    assert!(err(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":1,"x":0}"#
    )
    .contains("unknown field `x`"));
    assert!(err("PUT", "/machine-config", "[2, 128]").contains("expected a JSON object"));
    assert!(err(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":1,"irqchip":"pic"}"#
    )
    .contains("unknown variant `pic`, expected one of `kernel`, `split`, `userspace`"));
    assert!(err("PUT", "/machine-config", "{").contains("EOF"));
    assert!(err("PUT", "/machine-config", "").contains("Empty PUT request"));
    assert!(err("PATCH", "/vm", "").contains("Empty PATCH request"));
    assert!(err("PATCH", "/vm", r#"{"state":"Sleeping"}"#).contains("unknown variant `Sleeping`"));
    assert!(err("PUT", "/actions", r#"{"action_type":"Reboot"}"#).contains("unknown variant"));
    assert!(err("GET", "/", "{}").contains("GET request cannot have a body"));
}

#[test]
fn ids_must_be_valid_and_match_the_body() {
    let body = r#"{"drive_id":"b","path_on_host":"/d","is_root_device":false}"#;
    assert!(err("PUT", "/drives/a", body).contains("does not match the id from the body"));
    assert!(err("PUT", "/drives/a%20b", body).contains("Invalid ID"));
    let long = "x".repeat(65);
    assert!(err("PUT", &format!("/drives/{long}"), body).contains("Invalid ID"));
    assert!(err("PATCH", "/drives/a", r#"{"path_on_host":"/d"}"#).contains("Missing drive_id"));
    let net = r#"{"iface_id":"e1","host_dev_name":"t"}"#;
    assert!(err("PUT", "/network-interfaces/e0", net).contains("does not match"));
}

#[test]
fn wrong_methods_and_paths_are_refused() {
    for (m, p) in [
        ("DELETE", "/"),
        ("POST", "/actions"),
        ("GET", "/boot-source"),
        ("PUT", "/"),
        ("GET", "/drives"),
        ("PUT", "/drives/a/b"),
        ("GET", "/vm/config/extra"),
    ] {
        let body = if m == "PUT" { "{}" } else { "" };
        let msg = err(m, p, body);
        assert!(
            msg.contains("Invalid request method and/or path"),
            "{m} {p}: {msg}"
        );
    }
}

#[test]
fn responses_have_firecrackers_shapes() {
    assert_eq!(
        ApiResponse::no_content(),
        ApiResponse {
            status: 204,
            body: None
        }
    );
    let f = ApiResponse::bad_request("no \"way\"");
    let v: serde_json::Value = serde_json::from_str(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["fault_message"], "no \"way\"");
}

/// `api/tsubame.yaml`'s paths and methods, read by indentation: a path at
/// two spaces, its methods at four.
fn documented_routes() -> Vec<(String, String)> {
    let text = include_str!("../../../../api/tsubame.yaml");
    let mut in_paths = false;
    let mut path = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_paths = line.starts_with("paths:");
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
            let mut segments: Vec<&str> = path.split('/').collect();
            for s in segments.iter_mut() {
                if s.starts_with('{') {
                    *s = "{id}";
                }
            }
            path = segments.join("/");
        } else if let Some(m) = line.strip_prefix("    ").filter(|m| !m.starts_with(' ')) {
            out.push((m.trim_end_matches(':').to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_openapi_file_lists_exactly_the_served_routes() {
    let mut documented = documented_routes();
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And each listed route really parses (no 'Invalid request method').
    for (m, p) in ROUTES {
        let path = p.replace("{id}", "x");
        let body = if *m == "GET" { "" } else { "{}" };
        if let Err(r) = parse(m, &path, body.as_bytes()) {
            let msg = r.body.unwrap_or_default();
            assert!(!msg.contains("Invalid request method"), "{m} {p}: {msg}");
        }
    }
}

#[test]
fn snapshot_bodies_in_both_forms_and_their_errors() {
    use crate::control::snapshot::SnapshotLoadParams;
    let load = |body: &str| match parse("PUT", "/snapshot/load", body.as_bytes()).unwrap() {
        ApiRequest::SnapshotLoad(l) => l,
        other => panic!("{other:?}"),
    };
    let new_form = load(
        r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},
            "resume_vm":true,"track_dirty_pages":true,
            "network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],
            "vsock_override":{"uds_path":"/v.sock"}}"#,
    );
    let r = new_form.to_request().unwrap();
    assert_eq!(r.mem_path, std::path::PathBuf::from("m"));
    assert!(r.track_dirty_pages && new_form.resume_vm);
    assert_eq!(r.overrides.taps, vec![("eth0".into(), "tap9".into())]);
    assert_eq!(r.overrides.vsock_socket, Some("/v.sock".into()));
    let old_form: SnapshotLoadParams =
        load(r#"{"snapshot_path":"s","mem_file_path":"m","enable_diff_snapshots":true}"#);
    let r = old_form.to_request().unwrap();
    assert!(r.track_dirty_pages);
    assert_eq!(r.mem_path, std::path::PathBuf::from("m"));

    let refused = |body: &str| load(body).to_request().unwrap_err();
    assert!(refused(r#"{"snapshot_path":"s"}"#).contains("mem_backend"));
    assert!(refused(
        r#"{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}"#
    )
    .contains("Only one"));
    assert!(refused(
        r#"{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"u"}}"#
    )
    .contains("Uffd"));
    assert!(refused(r#"{"snapshot_path":"","mem_file_path":"m"}"#).contains("snapshot_path"));
    assert!(err(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"s","bogus":1}"#
    )
    .contains("bogus"));
    assert!(err(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Half"}"#
    )
    .contains("Half"));
    assert!(err("PUT", "/snapshot/create", r#"{"snapshot_path":"s"}"#).contains("mem_file_path"));
}
