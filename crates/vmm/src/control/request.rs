//! From an HTTP request (method, path, body) to an [`ApiRequest`], or to
//! the 400 Firecracker would answer. This runs on the API thread, so a
//! malformed request never reaches the VMM. New endpoints go here (and in
//! `api/tsubame.yaml`, which a test keeps in step with [`ROUTES`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::resources::{
    check_id, BootSource, Drive, Entropy, Logger, MachineConfig, MachineConfigUpdate, Metrics,
    NetworkInterface, Vsock,
};
use super::snapshot::{SnapshotCreateParams, SnapshotLoadParams};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmState,
}

/// One parsed request, for the VMM thread to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    Describe,
    Version,
    GetMachineConfig,
    GetVmConfig,
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(String),
    PutNet(NetworkInterface),
    PatchNet(String),
    PutVsock(Vsock),
    PutEntropy(Entropy),
    PutLogger(Logger),
    PutMetrics(Metrics),
    Action(ActionType),
    PatchVm(VmState),
    SnapshotCreate(SnapshotCreateParams),
    SnapshotLoad(SnapshotLoadParams),
}

/// What goes back to the client: a status and, for 200 and errors, JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<String>,
}

impl ApiResponse {
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    pub fn ok(value: &impl Serialize) -> Self {
        ApiResponse {
            status: 200,
            body: Some(serde_json::to_string(value).unwrap_or_else(|_| "{}".into())),
        }
    }

    /// Firecracker's error shape: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "fault_message": message.into() });
        ApiResponse {
            status,
            body: Some(body.to_string()),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiResponse::fault(400, message)
    }
}

/// Every (method, path) served; `{id}` stands for one path segment.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{id}"),
    ("PATCH", "/drives/{id}"),
    ("PUT", "/network-interfaces/{id}"),
    ("PATCH", "/network-interfaces/{id}"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
];

/// A body as `T`. Only a JSON object will do (serde would also take an
/// array for a struct).
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    let bad = |e: String| {
        ApiResponse::bad_request(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

fn same_id(path_id: &str, body_id: &str) -> Result<(), ApiResponse> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(ApiResponse::bad_request(format!(
            "The id from the path [{path_id}] does not match the id from the body [{body_id}]!"
        )))
    }
}

/// Whether `segments` fit `template` (`{id}` matches any one segment).
fn template_matches(template: &str, segments: &[&str]) -> bool {
    let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    t.len() == segments.len() && t.iter().zip(segments).all(|(t, s)| *t == "{id}" || t == s)
}

/// Parses one request. `path` may carry a query string, which is ignored.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let segments: Vec<&str> = if segments == [""] { vec![] } else { segments };
    let invalid = || {
        ApiResponse::bad_request(format!(
            "Invalid request method and/or path: {method} {path}."
        ))
    };
    if method == "GET" && !body.is_empty() {
        return Err(ApiResponse::bad_request("GET request cannot have a body."));
    }
    if (method == "PUT" || method == "PATCH") && body.is_empty() {
        return Err(ApiResponse::bad_request(format!("Empty {method} request.")));
    }
    // ROUTES is the one list of what is served (the OpenAPI file is checked
    // against it): anything else is refused here, whatever the match below.
    if !ROUTES
        .iter()
        .any(|(m, p)| *m == method && template_matches(p, &segments))
    {
        return Err(invalid());
    }
    use ApiRequest::*;
    let req = match (method, segments.as_slice()) {
        ("GET", []) => Describe,
        ("GET", ["version"]) => Version,
        ("GET", ["machine-config"]) => GetMachineConfig,
        ("PUT", ["machine-config"]) => PutMachineConfig(json(body)?),
        ("PATCH", ["machine-config"]) => PatchMachineConfig(json(body)?),
        ("PUT", ["boot-source"]) => PutBootSource(json(body)?),
        ("PUT", ["drives", id]) => {
            check_id(id).map_err(ApiResponse::bad_request)?;
            let d: Drive = json(body)?;
            same_id(id, &d.drive_id)?;
            PutDrive(d)
        }
        ("PATCH", ["drives", id]) => {
            check_id(id).map_err(ApiResponse::bad_request)?;
            let v: serde_json::Value = json(body)?;
            match v.get("drive_id").and_then(|d| d.as_str()) {
                Some(body_id) => same_id(id, body_id)?,
                None => return Err(ApiResponse::bad_request("Missing drive_id.")),
            }
            PatchDrive(id.to_string())
        }
        ("PUT", ["network-interfaces", id]) => {
            check_id(id).map_err(ApiResponse::bad_request)?;
            let n: NetworkInterface = json(body)?;
            same_id(id, &n.iface_id)?;
            PutNet(n)
        }
        ("PATCH", ["network-interfaces", id]) => {
            check_id(id).map_err(ApiResponse::bad_request)?;
            let _: serde_json::Value = json(body)?;
            PatchNet(id.to_string())
        }
        ("PUT", ["vsock"]) => PutVsock(json(body)?),
        ("PUT", ["entropy"]) => PutEntropy(json(body)?),
        ("PUT", ["logger"]) => PutLogger(json(body)?),
        ("PUT", ["metrics"]) => PutMetrics(json(body)?),
        ("PUT", ["actions"]) => Action(json::<ActionBody>(body)?.action_type),
        ("PATCH", ["vm"]) => PatchVm(json::<VmBody>(body)?.state),
        ("GET", ["vm", "config"]) => GetVmConfig,
        ("PUT", ["snapshot", "create"]) => SnapshotCreate(json(body)?),
        ("PUT", ["snapshot", "load"]) => SnapshotLoad(json(body)?),
        _ => return Err(invalid()),
    };
    Ok(req)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
