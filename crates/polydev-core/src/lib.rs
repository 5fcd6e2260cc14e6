//! Types and constants shared by every part of polydev: the controller, the VM
//! runtime, the image builder and the guest agent.
//!
//! This crate holds no behaviour beyond parsing and formatting; it is the one
//! place where a fact both sides of a wall must agree on (the guest's address,
//! the agent's port, the readiness marker) is written down.
#![warn(missing_docs)]

#[macro_use]
mod enums {
    /// A string that is not a known value of an enum.
    #[derive(Debug, thiserror::Error)]
    #[error("unknown {what} {value:?} (expected one of: {expected})")]
    pub struct ParseEnumError {
        #[doc(hidden)]
        pub what: &'static str,
        #[doc(hidden)]
        pub value: String,
        #[doc(hidden)]
        pub expected: &'static str,
    }

    macro_rules! str_enum {
        ($ty:ident, $what:literal, $( $var:ident => $s:literal ),+ ) => {
            impl $ty {
                /// The canonical lowercase name.
                pub fn as_str(&self) -> &'static str {
                    match self { $( $ty::$var => $s ),+ }
                }
            }
            impl std::fmt::Display for $ty {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
            }
            impl std::str::FromStr for $ty {
                type Err = $crate::ParseEnumError;
                fn from_str(s: &str) -> Result<Self, Self::Err> {
                    match s {
                        $( $s => Ok($ty::$var), )+
                        _ => Err($crate::ParseEnumError { what: $what, value: s.to_string(), expected: concat!($( $s, " " ),+) }),
                    }
                }
            }
        };
    }
}
pub use enums::ParseEnumError;

pub mod auth;
pub mod guest;
pub mod run;
pub mod vm;
