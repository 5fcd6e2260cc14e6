//! The tests' own internet (`polydev_egress::testnet`), with the OAuth
//! stand-in of the connect-flow tests at `auth.provider.test:8080`.

pub use polydev_egress::testnet::*;

/// The stand-in internet; panics (naming why) when it cannot be made.
pub fn start() -> TestInternet {
    TestInternet::start(None).unwrap_or_else(|e| panic!("the test internet: {e}"))
}

/// The stand-in internet serving the OAuth stand-in at
/// `TEST_PROVIDER_HOST:TEST_PROVIDER_PORT`.
pub fn start_with_provider() -> TestInternet {
    use polydev_login::standins::{TEST_PROVIDER_IP, TEST_PROVIDER_PORT};
    assert_eq!(TEST_PROVIDER_IP, EXTRA_ADDR);
    TestInternet::start(Some(Box::new(|| {
        Box::pin(async {
            match tokio::net::TcpListener::bind((TEST_PROVIDER_IP, TEST_PROVIDER_PORT)).await {
                Ok(l) => {
                    let _ = polydev_login::oauth_standin::serve(l).await;
                }
                Err(e) => eprintln!("the OAuth stand-in could not listen: {e}"),
            }
        })
    })))
    .unwrap_or_else(|e| panic!("the test internet: {e}"))
}
