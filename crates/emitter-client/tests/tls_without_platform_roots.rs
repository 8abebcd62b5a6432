//! A platform without root certificates: a `wss://` connect fails with an error that says so, and `ws://` is not
//! affected. A test binary of its own, because it points `SSL_CERT_FILE` (which rustls-native-certs reads instead of
//! the system's bundle) at a file that does not exist, for the whole process.

mod support;

use std::error::Error as _;

use emitter_client::{Client, ClientStatus, Error};
use support::within;

#[test]
fn wss_fails_clearly_and_ws_still_works() {
    // Set before the runtime starts any thread.
    std::env::set_var("SSL_CERT_FILE", "/nonexistent/emitter-test/ca-bundle.pem");
    std::env::remove_var("SSL_CERT_DIR");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::new();
        let url = "wss://localhost:1/";
        let error = within("connect", client.connect(url)).await.unwrap_err();
        assert!(matches!(&error, Error::Connect { .. }), "{error:?}");
        let cause = error.source().map(|cause| cause.to_string()).unwrap_or_default();
        assert!(
            cause.starts_with("no root certificates found on this platform"),
            "{cause}"
        );
        assert_eq!(client.status(), ClientStatus::Closed);

        // The roots are only needed for wss://.
        let (server, url) = support::start_default().await;
        support::connect_and_link(&client, &url, "simon").await;
        within("disconnect", client.disconnect(true)).await.unwrap();
        within("server close", server.close()).await.unwrap();
    });
}
