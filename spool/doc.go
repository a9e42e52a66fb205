// Package spool is trackd's durable queue of events.
//
// TODO: full documentation
package spool
