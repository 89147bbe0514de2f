//! The Autobahn|Testsuite's server under test: pushbox's WebSocket transport echoing every
//! message (`transport::ws::echo`), with the size limit a default app gets. Run by
//! `tests/autobahn/run.sh`; needs `--features autobahn-echo`, which no release build enables.
//!
//!     cargo run --features autobahn-echo --example autobahn_echo -- 127.0.0.1:9001

use pushbox::config::AppConfig;
use pushbox::transport::ws::{echo, frame_limit};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let app = AppConfig::with_defaults("1", "autobahn", "secret");
    let limit = frame_limit(app.max_message_bytes);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("autobahn echo on ws://{addr}/ (message limit {limit} bytes)");
    echo::serve(listener, limit).await
}
