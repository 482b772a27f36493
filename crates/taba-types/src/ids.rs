//! Identifiers. Random ids are UUIDv4 strings; `short()` gives the 8-character
//! prefix that humans see in tables (and that the CLI accepts as a prefix).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The first 8 characters, for human output.
            pub fn short(&self) -> &str {
                let end = self.0.len().min(8);
                &self.0[..end]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
    };
}

id_type!(
    /// Identifies one allocation (one instance of a task group placed on a node).
    AllocId
);
id_type!(
    /// Identifies one evaluation.
    EvalId
);
id_type!(
    /// Identifies one node; persisted by the agent so it survives restarts.
    NodeId
);
