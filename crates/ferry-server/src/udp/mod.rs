//! UDP services: the time service and the chat relay.
