//! Datagram formats of the UDP time service and the chat relay.
