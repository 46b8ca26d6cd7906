//! A scripted Kubernetes API server behind a real `kube::Client`.
//!
//! Every request the client makes is recorded (method, path, query, JSON body) and answered
//! by the test's [`World`]: which objects exist. Tests then assert on the requests made.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// `"PATCH /apis/apps/v1/namespaces/chat/statefulsets/demo"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the fake API server holds, shared with the test.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// The StatefulSet `demo` a GET (or LIST) returns (`None`: 404).
    pub statefulset: Option<Value>,
    /// More StatefulSets that exist (zones, leftovers), listed after `statefulset`.
    pub statefulsets: Vec<Value>,
    /// Status the API server adds to a StatefulSet an apply returns.
    pub statefulset_status: Option<Value>,
    /// The same, per StatefulSet name (overrides `statefulset_status`).
    pub statefulset_statuses: std::collections::BTreeMap<String, Value>,
    /// The pods a LIST of pods returns.
    pub pods: Vec<Value>,
    /// The lease namespace does not exist: creating a Lease answers 404.
    pub lease_namespace_missing: bool,
    /// Whether the generated token Secret exists.
    pub token_secret_exists: bool,
    /// Other Secrets that exist (the GET answer, by name).
    pub secrets: Vec<Value>,
    /// The ChatCluster answer to patches of it.
    pub chatcluster: Value,
    /// When set, every request but events fails with this code (an API server in trouble).
    pub fail_with: Option<u16>,
}

/// The running fake: its recorded requests and its world.
#[derive(Clone)]
pub struct ScriptedApi {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub world: Arc<Mutex<World>>,
}

impl ScriptedApi {
    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// Request lines, without events (they are asserted separately).
    pub fn lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| !is_event(r))
            .map(Recorded::line)
            .collect()
    }

    /// The events the operator published, as `(type, reason, note)`.
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.requests()
            .iter()
            .filter(|r| is_event(r))
            .map(|r| {
                let s = |k: &str| r.body[k].as_str().unwrap_or_default().to_string();
                (s("type"), s("reason"), s("note"))
            })
            .collect()
    }

    /// The body of the last request whose line ends with `suffix`.
    pub fn body_of(&self, method: &str, path_suffix: &str) -> Value {
        self.requests()
            .iter()
            .rev()
            .find(|r| r.method == method && r.path.ends_with(path_suffix))
            .map(|r| r.body.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no {method} request to …{path_suffix}; requests were: {:#?}",
                    self.lines()
                )
            })
    }

    /// The recorded request with that line, failing when it was not made.
    pub fn request(&self, method: &str, path_suffix: &str) -> Recorded {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.method == method && r.path.ends_with(path_suffix))
            .unwrap_or_else(|| {
                panic!(
                    "no {method} request to …{path_suffix}; requests were: {:#?}",
                    self.lines()
                )
            })
    }
}

fn is_event(r: &Recorded) -> bool {
    r.path.contains("/apis/events.k8s.io/")
}

/// A `kube::Client` whose requests reach the scripted API, and the API's handle.
pub fn scripted_api(world: World) -> (Client, ScriptedApi) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api = ScriptedApi {
        requests: Arc::default(),
        world: Arc::new(Mutex::new(world)),
    };
    let server = api.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.expect("request body");
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            let rec = Recorded {
                method,
                path,
                query,
                body,
            };
            let (code, reply) = respond(&rec, &server.world.lock().expect("lock"));
            server.requests.lock().expect("lock").push(rec);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(resp);
        }
    });
    (Client::new(service, "default"), api)
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn respond(r: &Recorded, world: &World) -> (u16, Value) {
    let m = r.method.as_str();
    let p = r.path.as_str();
    if is_event(r) {
        return (201, r.body.clone());
    }
    if let Some(code) = world.fail_with {
        return (
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "scripted outage", "reason": "ServiceUnavailable", "code": code}),
        );
    }
    if p.ends_with("/statefulsets") && m == "GET" {
        let items: Vec<Value> = world
            .statefulset
            .iter()
            .chain(&world.statefulsets)
            .cloned()
            .collect();
        return (
            200,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {}, "items": items}),
        );
    }
    if p.ends_with("/pods") && m == "GET" {
        return (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": world.pods}),
        );
    }
    if m == "DELETE" {
        let name = p.rsplit('/').next().unwrap_or_default();
        return (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name}}),
        );
    }
    if p.ends_with("/leases") && m == "POST" && world.lease_namespace_missing {
        return (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "namespaces \"parley-system\" not found", "reason": "NotFound", "code": 404}),
        );
    }
    if p.ends_with("/statefulsets/demo") && m == "GET" {
        return match &world.statefulset {
            Some(s) => (200, s.clone()),
            None => not_found("statefulsets demo"),
        };
    }
    if p.ends_with("/secrets/demo-token") && m == "GET" {
        return if world.token_secret_exists {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-token", "namespace": "chat"}}),
            )
        } else {
            not_found("secrets demo-token")
        };
    }
    if p.contains("/secrets/") && m == "GET" {
        let name = p.rsplit('/').next().unwrap_or_default();
        return match world.secrets.iter().find(|s| s["metadata"]["name"] == name) {
            Some(s) => (200, s.clone()),
            None => not_found("secret"),
        };
    }
    if (p.ends_with("/secrets") || p.ends_with("/leases")) && m == "POST" {
        return (201, r.body.clone());
    }
    if p.contains("/leases/") && m == "GET" {
        return not_found("leases");
    }
    if p.contains("/chatclusters/") && m == "PATCH" {
        return (200, world.chatcluster.clone());
    }
    if m == "PATCH" {
        // Server-side apply: the API server answers with the object (and, for the
        // StatefulSet, its status).
        let mut obj = r.body.clone();
        let name = p.rsplit('/').next().unwrap_or_default().to_string();
        if obj.get("kind").is_none() {
            // A merge patch: answer with the object as it exists.
            obj = world
                .statefulset
                .iter()
                .chain(&world.statefulsets)
                .find(|s| s["metadata"]["name"] == name.as_str())
                .cloned()
                .unwrap_or_else(|| json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}}));
        }
        if p.contains("/statefulsets/")
            && let Some(st) = world
                .statefulset_statuses
                .get(&name)
                .or(world.statefulset_status.as_ref())
        {
            obj["status"] = st.clone();
        }
        return (200, obj);
    }
    (
        500,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("scripted API has no answer for {m} {p}"), "reason": "InternalError", "code": 500}),
    )
}
