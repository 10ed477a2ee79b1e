//! Reading a node's Prometheus endpoint in tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole HTTP answer to `GET path`.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The metrics text (asserting a 200).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let out = get(addr, "/metrics").await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

/// The value of a sample with labels (`name{labels}`), 0 when absent.
pub fn labelled(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The value of an unlabelled sample.
pub fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim()
        .parse()
        .unwrap()
}
