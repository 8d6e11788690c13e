//! Users, verifiers and login: the user store, SCRAM server side, throttling.

pub mod throttle;

pub use throttle::{Decision, Throttle, ThrottleConfig};
