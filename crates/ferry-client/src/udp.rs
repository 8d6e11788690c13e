//! Clients of the UDP time service and chat relay.
