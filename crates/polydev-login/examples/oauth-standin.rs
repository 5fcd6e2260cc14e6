//! Runs the OAuth 2.0 authorization-server stand-in on its own:
//! `cargo run -p polydev-login --example oauth-standin -- 127.0.0.1:8765`.
//! Point the stand-in CLIs at it with `POLYDEV_STANDIN_OAUTH=http://127.0.0.1:8765`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "OAuth stand-in listening on http://{}",
        listener.local_addr()?
    );
    polydev_login::oauth_standin::serve(listener).await
}
