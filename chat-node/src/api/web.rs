//! The web client, its assets compiled into the binary (nothing is fetched at run time).

use http::StatusCode;
use warp::reply::{Reply, Response};

const INDEX: &str = include_str!("../../web/index.html");
const APP: &str = include_str!("../../web/app.js");
const TIMELINE: &str = include_str!("../../web/timeline.js");
const STYLE: &str = include_str!("../../web/style.css");

/// The asset at `name` (`""` is the page), if there is one.
pub fn asset(name: &str) -> Option<Response> {
    let (body, content_type) = match name {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP, "text/javascript; charset=utf-8"),
        "timeline.js" => (TIMELINE, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let reply = warp::reply::with_header(body, "content-type", content_type);
    let reply = warp::reply::with_header(reply, "cache-control", "no-cache");
    let reply = warp::reply::with_header(reply, "x-content-type-options", "nosniff");
    Some(warp::reply::with_status(reply, StatusCode::OK).into_response())
}
