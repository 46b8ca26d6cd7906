//! The route table of PROTOCOL.md: each arm parses, authorises, calls a service, encodes.

use bytes::Buf;
use futures_util::Stream;
use http::{Method, StatusCode};
use serde_json::{Map, Value};
use warp::reply::{Reply, Response};

use super::{Request, json, json_body, no_content, read_body};
use crate::protocol::ApiError;
use crate::protocol::items;
use crate::protocol::types::{
    Assignment, Blocks, Channels, Contacts, Devices, GroupPatch, Groups, History, Login, NewGroup,
    NewMember, PasswordChange, ProfilePatch, PushRegistration, ReadBody, Reads, SignUp, SyncPage,
};
use crate::state::AppState;

/// 405 naming the allowed methods (`allowed` reads "POST or GET"), with an `Allow` header.
fn method_not_allowed(req: &Request, allowed: &str) -> ApiError {
    ApiError::new(
        crate::protocol::ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; use {allowed}",
            req.method, req.path
        ),
    )
    .with_allow(allowed.replace(" or ", ", "))
}

fn not_found(req: &Request) -> ApiError {
    ApiError::not_found(format!(
        "there is no {} {}; see docs/protocol.md for the API",
        req.method, req.path
    ))
}

/// Answer one request.
pub async fn route<S, B>(
    state: &std::sync::Arc<AppState>,
    req: Request,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let segments = req.segments();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let limit = state.limits.max_frame_bytes();
    let m = req.method.clone();

    let probe = m == Method::GET || m == Method::HEAD;
    match segs.as_slice() {
        ["healthz" | "readyz" | "metrics"] if !probe => {
            Err(method_not_allowed(&req, "GET or HEAD"))
        }
        ["healthz"] => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ["readyz"] => state
            .readiness()
            .await
            .map(|()| json(StatusCode::OK, &serde_json::json!({"status": "ready"}))),
        ["metrics"] => Ok(warp::reply::with_header(
            state.metrics.render(),
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .into_response()),
        ["v1", "ws"] => match m {
            Method::GET => {
                let token = req.query_once("token")?;
                crate::gateway::upgrade(state, &req.headers, token, req.upgrade, req.control).await
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "users"] => match m {
            Method::POST => {
                state
                    .limiters
                    .check_login_address(req.client_address(state))?;
                let body: SignUp = json_body(&read_body(body, &req, limit).await?)?;
                Ok(json(
                    StatusCode::CREATED,
                    &state.accounts.sign_up(body).await?,
                ))
            }
            Method::GET => {
                req.auth(state).await?;
                let name = req.query_once("username")?.ok_or_else(|| {
                    ApiError::bad_request("look a user up with GET /v1/users?username=NAME")
                })?;
                Ok(json(
                    StatusCode::OK,
                    &state.accounts.profile_by_name(&name).await?,
                ))
            }
            _ => Err(method_not_allowed(&req, "POST or GET")),
        },
        ["v1", "sessions"] => match m {
            Method::POST => {
                state
                    .limiters
                    .check_login_address(req.client_address(state))?;
                let body: Login = json_body(&read_body(body, &req, limit).await?)?;
                Ok(json(StatusCode::OK, &state.accounts.log_in(body).await?))
            }
            _ => Err(method_not_allowed(&req, "POST")),
        },
        ["v1", "sessions", "current"] => match m {
            Method::DELETE => {
                let me = req.auth(state).await?;
                state.revocation.log_out(&me).await.map(|()| no_content())
            }
            _ => Err(method_not_allowed(&req, "DELETE")),
        },
        ["v1", "users", "me", "password"] => match m {
            Method::PUT => {
                let me = req.auth(state).await?;
                let body: PasswordChange = json_body(&read_body(body, &req, limit).await?)?;
                state
                    .accounts
                    .change_password(&me, body.password, body.new_password)
                    .await
                    .map(|()| no_content())
            }
            _ => Err(method_not_allowed(&req, "PUT")),
        },
        ["v1", "users", "me"] => {
            let me = req.auth(state).await?;
            match m {
                Method::GET => Ok(json(
                    StatusCode::OK,
                    &state.accounts.own_profile(&me.sub).await?,
                )),
                Method::PATCH => {
                    let patch: ProfilePatch = json_body(&read_body(body, &req, limit).await?)?;
                    let (profile, moved) = state.accounts.update_profile(&me.sub, &patch).await?;
                    if let Some(region) = moved {
                        // Every node learns the new home; the user's node moves their sockets.
                        state.links.announce_home(&me.sub, &region);
                    }
                    Ok(json(StatusCode::OK, &profile))
                }
                _ => Err(method_not_allowed(&req, "GET or PATCH")),
            }
        }
        ["v1", "users", user_id] => match m {
            Method::GET => {
                req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &state.accounts.profile(user_id).await?,
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "contacts"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &Contacts {
                        contacts: state.chat.contacts(&me.sub).await?,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "contacts", user_id] => {
            let me = req.auth(state).await?;
            match m {
                Method::PUT => state
                    .chat
                    .add_contact(&me.sub, user_id)
                    .await
                    .map(|()| no_content()),
                Method::DELETE => state
                    .chat
                    .remove_contact(&me.sub, user_id)
                    .await
                    .map(|()| no_content()),
                _ => Err(method_not_allowed(&req, "PUT or DELETE")),
            }
        }
        ["v1", "groups"] => {
            let me = req.auth(state).await?;
            match m {
                Method::POST => {
                    let body: NewGroup = json_body(&read_body(body, &req, limit).await?)?;
                    Ok(json(
                        StatusCode::CREATED,
                        &state
                            .chat
                            .create_group(&me.sub, &body.name, body.members)
                            .await?,
                    ))
                }
                Method::GET => Ok(json(
                    StatusCode::OK,
                    &Groups {
                        groups: state.chat.groups(&me.sub).await?,
                    },
                )),
                _ => Err(method_not_allowed(&req, "POST or GET")),
            }
        }
        ["v1", "groups", group_id] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &state.chat.group(&me.sub, group_id).await?,
                ))
            }
            Method::PATCH => {
                let me = req.auth(state).await?;
                let body: GroupPatch = json_body(&read_body(body, &req, limit).await?)?;
                Ok(json(
                    StatusCode::OK,
                    &state
                        .chat
                        .rename_group(&me.sub, &me.dev, group_id, &body.name)
                        .await?,
                ))
            }
            _ => Err(method_not_allowed(&req, "GET or PATCH")),
        },
        ["v1", "groups", group_id, "members"] => match m {
            Method::POST => {
                let me = req.auth(state).await?;
                let body: NewMember = json_body(&read_body(body, &req, limit).await?)?;
                Ok(json(
                    StatusCode::OK,
                    &state
                        .chat
                        .add_member(&me.sub, &me.dev, group_id, &body.user_id)
                        .await?,
                ))
            }
            _ => Err(method_not_allowed(&req, "POST")),
        },
        ["v1", "groups", group_id, "members", user_id] => match m {
            Method::DELETE => {
                let me = req.auth(state).await?;
                state
                    .chat
                    .remove_member(&me.sub, &me.dev, group_id, user_id)
                    .await
                    .map(|()| no_content())
            }
            _ => Err(method_not_allowed(&req, "DELETE")),
        },
        ["v1", "messages"] => match m {
            Method::POST => {
                let me = req.auth(state).await?;
                let mut obj: Map<String, Value> = json_body(&read_body(body, &req, limit).await?)?;
                let send = items::http_request(&mut obj)?;
                state.limiters.check_send(&me.sub)?;
                let ack = state.chat.send(&me.sub, &me.dev, send).await?;
                let frame = crate::protocol::frames::ServerFrame::Ack { ack, req: None };
                Ok(json(StatusCode::OK, &frame))
            }
            _ => Err(method_not_allowed(&req, "POST")),
        },
        ["v1", "channels", channel, "messages"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                let (messages, more) = state
                    .chat
                    .history(
                        &me.sub,
                        channel,
                        req.query_u64("after_seq")?,
                        req.query_u64("before_seq")?,
                        req.query_u64("limit")?,
                    )
                    .await?;
                Ok(json(StatusCode::OK, &History { messages, more }))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "channels"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &Channels {
                        channels: state.chat.channels(&me.sub).await?,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "channels", channel, "read"] => match m {
            Method::POST => {
                let me = req.auth(state).await?;
                let body: ReadBody = json_body(&read_body(body, &req, limit).await?)?;
                state
                    .chat
                    .mark_read(&me.sub, channel, body.seq)
                    .await
                    .map(|_| no_content())
            }
            _ => Err(method_not_allowed(&req, "POST")),
        },
        ["v1", "channels", channel, "reads"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &Reads {
                        reads: state.chat.reads(&me.sub, channel).await?,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "blocks"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &Blocks {
                        blocks: state.chat.blocks(&me.sub).await?,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "blocks", user_id] => {
            let me = req.auth(state).await?;
            let block = match m {
                Method::PUT => true,
                Method::DELETE => false,
                _ => return Err(method_not_allowed(&req, "PUT or DELETE")),
            };
            state
                .chat
                .set_block(&me.sub, user_id, block)
                .await
                .map(|()| no_content())
        }
        ["v1", "sync"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                let after = req.query_u64("after")?.unwrap_or(0);
                let (items, more) = state
                    .chat
                    .sync(&me.sub, after, req.query_u64("limit")?)
                    .await?;
                Ok(json(StatusCode::OK, &SyncPage { items, more }))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "devices"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                Ok(json(
                    StatusCode::OK,
                    &Devices {
                        devices: state.accounts.devices(&me.sub).await?,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        ["v1", "devices", device_id] => match m {
            Method::DELETE => {
                let me = req.auth(state).await?;
                crate::protocol::validate::device_id(device_id).map_err(|_| {
                    ApiError::not_found(format!("you have no device {device_id:?}"))
                })?;
                state
                    .revocation
                    .remove_device(&me.sub, device_id)
                    .await
                    .map(|()| no_content())
            }
            _ => Err(method_not_allowed(&req, "DELETE")),
        },
        ["v1", "devices", device_id, "push"] => match m {
            Method::PUT => {
                let me = req.auth(state).await?;
                let body: PushRegistration = json_body(&read_body(body, &req, limit).await?)?;
                state
                    .accounts
                    .set_push(&me.sub, device_id, body)
                    .await
                    .map(|()| no_content())
            }
            _ => Err(method_not_allowed(&req, "PUT")),
        },
        ["v1", "assign"] => match m {
            Method::GET => {
                let me = req.auth(state).await?;
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok());
                // The home is read from the user record, so every node answers the same.
                let home = state.accounts.home_region(&me.sub).await?;
                state.cluster.learn_home(&me.sub, &home);
                let node = state.cluster.assign(&me.sub, &home, host);
                Ok(json(
                    StatusCode::OK,
                    &Assignment {
                        node_id: node.node_id,
                        ws_url: node.ws_url,
                        region: node.region,
                    },
                ))
            }
            _ => Err(method_not_allowed(&req, "GET")),
        },
        [name] if m == Method::GET => super::web::asset(name).ok_or_else(|| not_found(&req)),
        _ => Err(not_found(&req)),
    }
}
