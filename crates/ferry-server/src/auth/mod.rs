//! Users, verifiers and login: the user store, SCRAM server side, throttling.
