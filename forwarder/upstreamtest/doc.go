// Package upstreamtest is a stand-in for the hosted Track API that trackd
// forwards to, for tests, benchmarks and the demo. It serves the contract in
// shared/CONTRACT.md on a loopback address, records every request it is sent,
// and can be told at run time to misbehave the ways a real upstream does.
//
// trackd's own binary never imports this package; only tests, the benchmark
// tool and the demo do.
//
// # Basics
//
// [NewServer] listens on an address ("" means 127.0.0.1 on a free port) and
// serves until [Server.Close]:
//
//	up, err := upstreamtest.NewServer("")
//	...
//	defer up.Close()
//	fwd, err := forwarder.New(sp, forwarder.Options{URL: up.URL(), ...})
//
// POST /api/v1/track and POST /api/v1/identify are validated as upstream
// validates them: the body must be a JSON object with a non-empty apiKey, one
// of userId and anonymousId, a non-empty event (track only), properties or
// traits that are objects when present, and a timestamp that is an ISO-8601
// date-time when present. A valid request is answered 200
// {"status":"success"}; an invalid one 400 {"status":"failure","message":...}.
// Other paths get 404 and other methods 405, both in the failure shape.
//
// [Server.Received] returns every request in arrival order: path, body,
// headers, arrival time and the status it was answered with (0 when the
// server hung, dropped or reset instead of answering).
//
// # Misbehaving
//
// [Server.SetMode] changes how requests are answered; it is safe to call
// while requests are in flight, and takes effect for requests that arrive
// after it returns. A [Mode] can
//
//   - answer every request with a fixed status, body and Retry-After header
//     (429 with delta-seconds or an HTTP-date, 5xx, 401, ...);
//   - answer slowly (Delay), never (Hang), or not at all, by closing the
//     connection (Drop) or resetting it (Reset);
//   - enforce a rate limit of N requests per second across all clients, as a
//     token bucket, answering 429 beyond it;
//   - script the answer per request (Script), e.g. 422 for one event name.
//
// [Server.Down] closes the listener and every connection, so clients see
// "connection refused" until [Server.Up] listens again on the same address.
//
// For the demo, [Run] serves until its context ends and accepts run-time mode
// changes over HTTP: PUT /_upstreamtest/mode with a [ParseMode] spec as the
// body (e.g. "status=429,retry-after=5" or "rate=50"), and GET
// /_upstreamtest/stats for counts by status.
package upstreamtest
