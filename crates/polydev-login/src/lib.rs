//! Provider logins inside a polydev VM.
//!
//! The pieces, each in its own module:
//! - [`provider`]: what is known about each CLI's login (SPEC §3): its
//!   command, environment, authorization URL shape and credential files;
//! - [`credentials`]: is a credential file complete and well-formed;
//! - [`ansi`] and [`url`]: finding the authorization URL in terminal output,
//!   and checking one before it is shown;
//! - [`hook`]: the `$BROWSER` capture script;
//! - [`pty`]: starting a program on a fresh pseudo-terminal, as a given user;
//! - [`callback`]: forwarding an OAuth redirect to the CLI's localhost listener;
//! - [`session`]: [`LoginSession`], which drives one login from start to
//!   `authenticated` or `failed`;
//! - `oauth_standin` (feature `oauth-standin`): a local OAuth 2.0
//!   authorization server standing in for the providers' in tests.
//!
//! `standins/` next to this crate holds Node.js stand-ins for the three CLIs;
//! they are test doubles, not the real CLIs.

#![warn(missing_docs)]

pub mod ansi;
pub mod callback;
pub mod credentials;
mod error;
pub mod hook;
#[cfg(feature = "oauth-standin")]
pub mod oauth_standin;
pub mod prepare;
pub mod provider;
pub mod pty;
pub mod session;
pub mod standins;
pub mod url;

pub use error::LoginError;
pub use provider::{GeminiMode, LoginOptions, Provider};
pub use session::{LoginSession, LoginStatus, RunAs};
