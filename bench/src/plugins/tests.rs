//! The native baseline must decide exactly what the wasm plugins decide.

use burrow_host::plugins::types::{
    Action, AuthorizeRequest, Credential, Principal, ResolveRequest, UserAuthRequest,
};

use super::decide::{authorize_request, route_request};
use super::*;
use crate::HOST;

fn native() -> Native {
    Native::new(&config_json(&authorizer_config()).unwrap(), &config_json(WORKLOAD_CONFIG).unwrap()).unwrap()
}

/// The baseline is only a baseline if it decides what the wasm plugins decide: same
/// workload, same principal, same decision, for allowed, refused, rejected,
/// anonymous and unresolvable requests.
#[tokio::test]
async fn native_baseline_decides_like_the_plugins() {
    let plugins = Plugins::load(&plugins_config(InstancePolicy::Fresh).unwrap(), PluginsOptions::default())
        .await
        .unwrap();
    let native = native();
    let cases = [
        (HOST, Credential::Bearer(USER_TOKEN.into())),
        (HOST, Credential::Bearer("bob-token-0123456789abcdef".into())),
        (HOST, Credential::Bearer("nobody-knows-this-token".into())),
        (HOST, Credential::None),
        (HOST, Credential::Cookie { name: "burrow_session".into(), value: USER_TOKEN.into() }),
        ("api-edge-eu-1.localhost", Credential::Bearer(USER_TOKEN.into())),
        ("nothing.example", Credential::Bearer(USER_TOKEN.into())),
    ];
    let mut decided = 0;
    for (host, credential) in cases {
        let resolve = ResolveRequest {
            action: Action::Http,
            host: host.into(),
            path: "/".into(),
            method: "GET".into(),
            ssh_user: String::new(),
            port: 0,
        };
        let target = plugins.resolve(&resolve).await.unwrap();
        assert_eq!(native.resolve(&resolve), target, "resolve {host}");
        let Some(target) = target else { continue };
        let user = UserAuthRequest {
            credential,
            client_addr: "127.0.0.1:1".into(),
            host: host.into(),
            action: Action::Http,
        };
        let make =
            move |principal: Option<&Principal>| AuthorizeRequest { target, ..authorize_request(principal) };
        let verdict = plugins.authorize_user(&user, make.clone()).await.unwrap();
        assert_eq!(native.authorize_user(&user, make), (verdict.who, verdict.decision), "{host} {user:?}");
        decided += 1;
    }
    assert_eq!(decided, 6, "every case but the unknown host reaches the authorizer");

    let route = route_request();
    assert_eq!(native.route(&route), plugins.try_route(&route).await.unwrap());
}
