// Package agent owns trackd's process: it loads the configuration, opens the
// spool, serves the ingest API on a loopback TCP port and/or a Unix socket,
// runs the forwarder, and shuts all of it down in order.
//
// # Promises
//
// An ingest request is answered 200 only after spool.Append has returned,
// which is after the event's bbolt transaction was committed with fsync. Every
// other answer uses upstream's failure shape,
// {"status":"failure","message":"..."}, with a message that names what is
// wrong and what to do. Bad input never reaches the spool.
//
// # Lifecycle
//
// New builds an Agent from a validated config.Config; Start opens the spool,
// binds the listeners and starts the forwarder; Close shuts down in reverse:
// listeners stop accepting and in-flight requests finish, the forwarder drains
// for what is left of shutdown.timeout, then the spool is closed.
//
// # Bounds
//
// Memory is bounded by the connection cap times max_body_bytes plus the
// spool's and forwarder's fixed working sets; nothing grows with the backlog.
// Slow clients are cut off by header, read, write and idle timeouts.
package agent
