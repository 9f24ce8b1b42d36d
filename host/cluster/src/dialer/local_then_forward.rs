//! The cluster dialer's decisions against a fake cluster: which replica serves, when the
//! registry is asked, what happens while an agent is nowhere. The local side is the
//! real core (registry, sessions, local dialer, built-in plugins); the agents are
//! in-memory tunnels that answer `Dial`; no Redis, no sockets, no clocks asserted.

use std::collections::HashSet;
use std::sync::Mutex;

use burrow_host_core::registry::{IdleTunnel, LocalRegistry, Session, TunnelRegistry};
use burrow_host_core::tunnel_io;
use burrow_host_metrics::RoutePath;
use burrow_host_plugins::{PluginsConfig, PluginsOptions};
use burrow_proto::pb;
use burrow_proto::tunnel::frames;
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tonic::codec::{Codec, Streaming};
use tonic::Status;

use super::*;

const AGENT: &str = "a";

/// One parked tunnel of `agent` whose agent answers the first `Dial` with success. The
/// tunnel's session is tagged `tag`, so a test can tell who served. The receiver is the
/// agent's end of the host's frames; dropping it ends the RPC.
fn tunnel(agent: &str, tag: &str) -> (IdleTunnel, mpsc::Receiver<Result<pb::HostFrame, Status>>) {
    let answer = frames::dial_ok().encode_to_vec();
    let mut body = vec![0u8];
    body.extend(u32::try_from(answer.len()).unwrap().to_be_bytes());
    body.extend(answer);
    let mut codec = tonic_prost::ProstCodec::<pb::HostFrame, pb::AgentFrame>::default();
    let inbound = Streaming::new_request(
        codec.decoder(),
        http_body_util::Full::new(bytes::Bytes::from(body)),
        None,
        None,
    );
    let (tx, rx) = mpsc::channel(4);
    let session = Arc::new(session(agent, tag));
    (IdleTunnel { inbound, outbound: tx, session }, rx)
}

fn session(agent: &str, tag: &str) -> Session {
    Session {
        agent_id: agent.into(),
        agent_replica_id: tag.into(),
        session_id: format!("session-{tag}"),
        remote_addr: String::new(),
        token_sha256: [0; 32],
        protocol_minor: burrow_proto::PROTOCOL_MINOR,
        identity: None,
        retired: Default::default(),
        cut: Default::default(),
    }
}

use super::tests::candidate;

/// The other replicas: what the registry answers, who really holds the agent, and a
/// record of every question the dialer asked.
struct FakeCluster {
    lookup: Mutex<Result<Vec<Candidate>, String>>,
    holders: Mutex<HashSet<String>>,
    lookups: Mutex<usize>,
    forwards: Mutex<Vec<(String, String, String)>>,
    forgotten: Mutex<Vec<(String, String)>>,
    /// Agent ends of the tunnels forwarded streams use, kept open.
    agents: Mutex<Vec<mpsc::Receiver<Result<pb::HostFrame, Status>>>>,
    announce: Arc<Notify>,
    /// How many watches the dialer has registered.
    watches: tokio::sync::watch::Sender<usize>,
}

impl FakeCluster {
    fn new(lookup: Result<Vec<&str>, &str>, holders: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            lookup: Mutex::new(lookup.map(|c| c.into_iter().map(candidate).collect()).map_err(str::to_owned)),
            holders: Mutex::new(holders.iter().map(|h| (*h).to_owned()).collect()),
            lookups: Mutex::new(0),
            forwards: Mutex::new(Vec::new()),
            forgotten: Mutex::new(Vec::new()),
            agents: Mutex::new(Vec::new()),
            announce: Arc::new(Notify::new()),
            watches: tokio::sync::watch::Sender::new(0),
        })
    }

    fn lookups(&self) -> usize {
        *self.lookups.lock().unwrap()
    }

    fn forwarded_to(&self) -> Vec<String> {
        self.forwards.lock().unwrap().iter().map(|(replica, _, _)| replica.clone()).collect()
    }

    /// Another replica gains the agent and announces it.
    fn agent_appears_on(&self, replica: &str) {
        *self.lookup.lock().unwrap() = Ok(vec![candidate(replica)]);
        self.holders.lock().unwrap().insert(replica.to_owned());
        self.announce.notify_waiters();
    }

    /// Waits until the dialer has registered `n` watches, that is, looked the agent up
    /// `n` times (it watches before every lookup).
    async fn watched(&self, n: usize) {
        self.watches.subscribe().wait_for(|w| *w >= n).await.unwrap();
    }
}

impl Remotes for FakeCluster {
    fn candidates<'a>(&'a self, _agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Candidate>, String>> {
        *self.lookups.lock().unwrap() += 1;
        let answer = self.lookup.lock().unwrap().clone();
        Box::pin(async move { answer })
    }

    fn forward<'a>(
        &'a self,
        candidate: &'a Candidate,
        d: Forward<'a>,
    ) -> BoxFuture<'a, Result<TunnelStream, ForwardError>> {
        Box::pin(async move {
            let replica = candidate.replica_id.clone();
            self.forwards.lock().unwrap().push((
                replica.clone(),
                d.agent_id.to_owned(),
                d.dial.service.clone(),
            ));
            if !self.holders.lock().unwrap().contains(&replica) {
                return Err(ForwardError::NotThere(replica));
            }
            let (idle, agent_end) = tunnel(d.agent_id, &replica);
            self.agents.lock().unwrap().push(agent_end);
            let dialed = tunnel_io::dial_raw(idle, d.dial.clone(), d.answer_timeout)
                .await
                .map_err(|e| ForwardError::Failed { replica, message: e.to_string() })?;
            Ok(TunnelStream::forwarded(dialed.inbound, dialed.outbound, dialed.state, dialed.session, None))
        })
    }

    fn watch(&self, _agent_id: &str) -> BoxFuture<'static, ()> {
        let mut notified = Box::pin(self.announce.clone().notified_owned());
        notified.as_mut().enable();
        self.watches.send_modify(|w| *w += 1);
        Box::pin(notified)
    }

    /// This replica first, then the rest as the registry listed them (the built-in
    /// policy also puts this replica first).
    fn order(&self, _agent_id: &str, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates.sort_by_key(|c| !c.local);
        candidates
    }

    fn forget_later(&self, agent_id: &str, replica: &str) {
        self.forgotten.lock().unwrap().push((agent_id.to_owned(), replica.to_owned()));
    }

    fn speculative_delay(&self) -> Duration {
        Duration::from_millis(10)
    }
}

/// This replica ("here") with the built-in plugins and no router, dialing through `fake`.
async fn replica(fake: &Arc<FakeCluster>) -> (HostCore, Arc<ClusterDialer>) {
    let config: PluginsConfig = toml::from_str(
        r#"
        [authorizer]
        source = "builtin:authorizer-static"
        config = { default_access = "open" }
        "#,
    )
    .expect("test plugin config parses");
    let plugins = Plugins::load(&config, PluginsOptions::default()).await.expect("built-ins load");
    let registry: Arc<dyn TunnelRegistry> = Arc::new(LocalRegistry::new());
    let core =
        HostCore::new(plugins, registry, "here".into(), Duration::from_secs(5), Arc::new(Metrics::new()));
    let dialer = Arc::new(ClusterDialer::new(&core, fake.clone()));
    (core, dialer)
}

/// The agent holds a session and a parked tunnel here; returns the agent's end.
fn agent_here(core: &HostCore) -> mpsc::Receiver<Result<pb::HostFrame, Status>> {
    core.sessions.opened(&Arc::new(session(AGENT, "here")));
    let (idle, agent_end) = tunnel(AGENT, "here");
    core.registry.register(idle);
    agent_end
}

fn target() -> Target {
    Target {
        workload_kind: "workspace".into(),
        workload_id: AGENT.into(),
        agent_id: AGENT.into(),
        service: "web".into(),
    }
}

async fn dial(dialer: &ClusterDialer) -> Result<TunnelStream, OpenError> {
    let target = target();
    let request = DialRequest {
        target: &target,
        request_id: "req-1",
        wait: Duration::from_secs(20),
        session_key: "",
        kind: pb::DialKind::Tcp,
        principal: "",
    };
    dialer.dial(request).await
}

fn served_by(stream: &TunnelStream) -> (&str, RoutePath) {
    (stream.session().agent_replica_id.as_str(), stream.path())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_parked_here_is_used_without_asking_the_cluster() {
    let fake = FakeCluster::new(Ok(vec!["r2"]), &["r2"]);
    let (core, dialer) = replica(&fake).await;
    let _agent = agent_here(&core);
    let stream = dial(&dialer).await.expect("dialed");
    assert_eq!(served_by(&stream), ("here", RoutePath::Local));
    assert_eq!(fake.lookups(), 0, "the registry was not asked");
    assert!(fake.forwarded_to().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_held_only_by_another_replica_is_forwarded_there() {
    let fake = FakeCluster::new(Ok(vec!["r2"]), &["r2"]);
    let (_core, dialer) = replica(&fake).await;
    let stream = dial(&dialer).await.expect("dialed");
    assert_eq!(served_by(&stream), ("r2", RoutePath::Forwarded));
    assert_eq!(fake.lookups(), 1);
    assert_eq!(*fake.forwards.lock().unwrap(), vec![("r2".to_owned(), AGENT.to_owned(), "web".to_owned())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_no_longer_holds_the_agent_is_forgotten_and_the_next_serves() {
    let fake = FakeCluster::new(Ok(vec!["stale", "r3"]), &["r3"]);
    let (_core, dialer) = replica(&fake).await;
    let stream = dial(&dialer).await.expect("dialed");
    assert_eq!(served_by(&stream), ("r3", RoutePath::Forwarded));
    assert_eq!(fake.forwarded_to(), ["stale", "r3"]);
    assert_eq!(*fake.forgotten.lock().unwrap(), vec![(AGENT.to_owned(), "stale".to_owned())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_fails_at_once_when_the_agent_is_not_here() {
    let fake = FakeCluster::new(Err("connection refused"), &["r2"]);
    let (_core, dialer) = replica(&fake).await;
    match dial(&dialer).await {
        Err(OpenError::ClusterUnavailable { agent_id, reason }) => {
            assert_eq!(agent_id, AGENT);
            assert_eq!(reason, "connection refused");
        }
        Err(other) => panic!("expected ClusterUnavailable, got {other}"),
        Ok(_) => panic!("expected ClusterUnavailable, got a stream"),
    }
    assert!(fake.forwarded_to().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_replica_forwards_even_when_it_holds_the_agent() {
    let fake = FakeCluster::new(Ok(vec!["r2"]), &["r2"]);
    let (core, dialer) = replica(&fake).await;
    let _agent = agent_here(&core);
    core.lifecycle.begin_drain();
    let stream = dial(&dialer).await.expect("dialed");
    assert_eq!(served_by(&stream), ("r2", RoutePath::Forwarded));
    assert_eq!(core.registry.idle_count(AGENT), 1, "the local stream was left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_nowhere_is_dialed_where_it_is_announced() {
    let fake = FakeCluster::new(Ok(vec![]), &[]);
    let (_core, dialer) = replica(&fake).await;
    let d = dialer.clone();
    let pending = tokio::spawn(async move { dial(&d).await });
    fake.watched(1).await;
    // The watch is registered before the lookup: announcing in between would make the
    // first lookup find the agent already. Announce once that lookup found nothing.
    while fake.lookups() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fake.agent_appears_on("r2");
    let stream = pending.await.unwrap().expect("dialed after the announcement");
    assert_eq!(served_by(&stream), ("r2", RoutePath::Forwarded));
    assert_eq!(fake.lookups(), 2, "looked up once before and once after the announcement");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_nowhere_that_connects_here_is_handed_the_new_stream() {
    let fake = FakeCluster::new(Ok(vec![]), &[]);
    let (core, dialer) = replica(&fake).await;
    let d = dialer.clone();
    let pending = tokio::spawn(async move { dial(&d).await });
    fake.watched(1).await;
    let _agent = agent_here(&core);
    let stream = pending.await.unwrap().expect("dialed over the new local stream");
    assert_eq!(served_by(&stream), ("here", RoutePath::Local));
    assert!(fake.forwarded_to().is_empty());
}
