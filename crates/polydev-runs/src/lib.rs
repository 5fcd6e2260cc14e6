//! What a prompt run is, whatever runs it: the operator's per-provider
//! settings ([`settings`]), each CLI's non-interactive command line
//! ([`command`]), and one normalized event stream out of each CLI's own JSON
//! lines, with per-run usage ([`normalize`]). Knows nothing of VMs, the
//! store or HTTP.
#![warn(missing_docs)]

pub mod command;
pub mod model_standin;
pub mod normalize;
pub mod settings;
