//! Burrow's built-in router: `<service>-<agent>.<root-domain>`.
//!
//! Config (JSON from `host.config`): `{ "root_domains": ["localhost", ...] }`, default
//! `["localhost"]` so `*.localhost` works out of the box (browsers resolve it to loopback).

mod scheme;

wit_bindgen::generate!({
    path: "../../wit",
    world: "router-plugin",
});

use burrow::plugin::host;
use burrow::plugin::types::{RouteRequest, RouteTarget};
use exports::burrow::plugin::router::Guest;

struct HostnameRouter;

impl Guest for HostnameRouter {
    fn route(req: RouteRequest) -> Option<RouteTarget> {
        let roots = match scheme::RootDomains::from_json(&host::config()) {
            Ok(roots) => roots,
            // A trap makes the host fail closed and report the plugin with this message.
            Err(err) => panic!("router-hostname: invalid config: {err}"),
        };
        roots.route(&req.host).map(|r| RouteTarget {
            workload_id: format!("{}/{}", r.agent, r.service),
            agent_id: r.agent.to_string(),
            service: r.service.to_string(),
        })
    }
}

export!(HostnameRouter);
