//! The namespace, the echo workload and the proxy's dataplane, without a
//! cluster: routes set by hand, traffic real (needs root).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lab_net::echo::{self, Identity};
use lab_net::proxy::dataplane::Dataplane;
use lab_net::proxy::desired::{Backend, Forward, Listen, Route, Source};
use lab_net::{Netns, Protocol, client};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn who(pod: &str) -> Identity {
    Identity {
        pod: pod.to_string(),
        namespace: "default".to_string(),
        node: "n0".to_string(),
    }
}

fn forward(backends: &[&str], affinity: Option<Duration>) -> Route {
    Route::Forward(Forward {
        service: "default/web:http".to_string(),
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: addr(b),
                node: None,
                node_ip: None,
            })
            .collect(),
        affinity,
        source: Source::Client,
    })
}

#[tokio::test]
async fn traffic_through_the_namespace() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let netns = Arc::new(Netns::create(&dir.path().join("netns"), &lab_net::local_ranges()).await?);
    let ports = [(Protocol::Tcp, 8080), (Protocol::Udp, 5353)];
    let _a = echo::start(&netns, "10.192.0.2".parse()?, &ports, who("a"), None).await?;
    let _b = echo::start(&netns, "10.192.0.3".parse()?, &ports, who("b"), None).await?;

    // Straight to a pod; the client address is the one it bound.
    let r = client::http_get(
        &netns,
        addr("10.192.0.2:8080"),
        "/",
        Some("10.128.0.9".parse()?),
    )
    .await?;
    assert_eq!(r.status, 200);
    let answer = r.answer()?;
    assert_eq!(answer.identity.pod, "a");
    assert_eq!(answer.client.ip().to_string(), "10.128.0.9");
    assert_eq!(
        client::udp_ask(&netns, addr("10.192.0.3:5353"), Duration::from_secs(5))
            .await?
            .identity
            .pod,
        "b"
    );

    // Through a ClusterIP: round robin over both, TCP and UDP, the client kept.
    let mut plane = Dataplane::new(netns.clone());
    let vip = Listen::tcp(addr("10.96.0.10:80"));
    let vip_udp = Listen::udp(addr("10.96.0.10:53"));
    let mut want = BTreeMap::from([
        (vip, forward(&["10.192.0.2:8080", "10.192.0.3:8080"], None)),
        (vip_udp, forward(&["10.192.0.2:5353"], None)),
    ]);
    assert_eq!(plane.apply(want.clone()).await.len(), 2);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = client::http_get(&netns, vip.addr, "/", Some("10.128.0.9".parse()?)).await?;
        let answer = r.answer()?;
        assert_eq!(answer.client.ip().to_string(), "10.128.0.9");
        seen.push(answer.identity.pod);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);
    assert_eq!(
        client::udp_ask(&netns, vip_udp.addr, Duration::from_secs(5))
            .await?
            .identity
            .pod,
        "a"
    );

    // Affinity pins a client; a route change is followed live.
    want.insert(
        vip,
        forward(
            &["10.192.0.2:8080", "10.192.0.3:8080"],
            Some(Duration::from_secs(60)),
        ),
    );
    plane.apply(want.clone()).await;
    let first = client::http_get(&netns, vip.addr, "/", None)
        .await?
        .answer()?
        .identity
        .pod;
    for _ in 0..3 {
        assert_eq!(
            client::http_get(&netns, vip.addr, "/", None)
                .await?
                .answer()?
                .identity
                .pod,
            first
        );
    }
    want.insert(vip, forward(&["10.192.0.3:8080"], None));
    plane.apply(want.clone()).await;
    assert_eq!(
        client::http_get(&netns, vip.addr, "/", None)
            .await?
            .answer()?
            .identity
            .pod,
        "b"
    );

    // A route gone: refused. Nothing leaves the namespace.
    want.remove(&vip);
    plane.apply(want).await;
    assert!(client::refused(&netns, vip.addr).await);
    assert!(client::unreachable(&netns, addr("192.0.2.1:80")).await);
    assert!(client::unreachable(&netns, addr("[2001:db8::1]:80")).await);
    Ok(())
}
