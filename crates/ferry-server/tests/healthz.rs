//! Issue 16, item 4: `/healthz` answers what a load balancer needs, over a
//! real socket: `200 ok` while the homes and the user store answer, `503`
//! and a line naming the storage once the homes folder is gone.

use ferry_testkit::{TestServer, http_get};

#[tokio::test]
async fn issue16_healthz_names_the_storage_when_the_homes_folder_is_gone() {
    let server = TestServer::start_with(|c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = server.metrics_addr.expect("the metrics endpoint runs");
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || http_get(addr, path));
    assert_eq!(get("/healthz").await.unwrap().unwrap(), (200, "ok\n".to_string()));
    let (status, body) = get("/metrics").await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE ferry_logins_total counter"), "{body}");
    assert_eq!(get("/").await.unwrap().unwrap().0, 404);

    std::fs::remove_dir_all(server.config.homes_dir()).unwrap();
    let (status, body) = get("/healthz").await.unwrap().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("storage: homes folder "), "{body}");
    assert!(!body.contains("users:"), "the user store still answers: {body}");
    assert_eq!(body.lines().count(), 1, "{body:?}");

    std::fs::create_dir_all(server.config.homes_dir()).unwrap();
    assert_eq!(get("/healthz").await.unwrap().unwrap().0, 200);
    server.stop().await;
}

/// Off unless asked for: no test server, and no default configuration,
/// takes a fixed port.
#[tokio::test]
async fn issue16_no_metrics_endpoint_unless_configured() {
    let server = TestServer::start().await.unwrap();
    assert_eq!(server.metrics_addr, None);
    server.stop().await;
}
