// Package forwarder drains trackd's spool upstream. It owns everything
// between a record at rest in the spool and upstream's answer to it: the
// HTTP client, the send rate, retries, pauses, and the decision to delete or
// dead-letter. It never calls back into the agent; the agent reads Stats.
//
// # Basics
//
// New checks Options and returns a Forwarder over a Store (satisfied by
// *spool.Spool); Start runs it; Shutdown drains and stops it:
//
//	f, err := forwarder.New(sp, forwarder.Options{URL: "https://api.browsee.io", Rate: 20, Burst: 20, Concurrency: 4})
//	...
//	f.Start(ctx)
//	...
//	err = f.Shutdown(drainCtx) // before sp.Close
//
// Records leave oldest first. Each is one POST of exactly the spooled bytes,
// to URL+"/api/v1/track" or URL+"/api/v1/identify" by its kind, with
// Content-Type: application/json and the configured User-Agent. At most
// Concurrency requests are in flight, over a pool of keep-alive connections;
// each is bounded by Timeout, answers are read up to 64 KiB so connections
// are reused, and redirects are never followed. HTTPS certificates are always
// verified; HTTPS_PROXY and NO_PROXY are honoured.
//
// # Answers
//
// One function, classify, decides what an answer means:
//
//	2xx {"status":"success"}, or an empty or non-JSON 2xx   delivered: deleted from the spool
//	2xx {"status":"failure"}, 400, 404, 413, 422, other 4xx  permanent: dead-lettered
//	401, 403, 407, 3xx, an untrusted certificate             halt: pause everything
//	408, 429, 5xx, timeout, refused, reset, DNS failure      retryable: sent again
//
// Permanent: the record moves to the spool's dead letters with the HTTP
// status, the time, and the first KiB of the answer's body as the reason. It is never retried
// automatically; each is logged at warn (repeats are summarised). A 4xx the
// contract does not describe is taken as upstream refusing the event.
//
// Halt: the key, the URL or the certificate is wrong, not the event. Nothing
// is sent until a backoff (RetryInitial doubling to RetryMax, without jitter)
// has passed; each step is logged once at error; nothing is dead-lettered.
// A redirect is a halt, not a dead letter: it means upstream.url is wrong
// (http for https, a moved host) and every record would meet it. The halt
// ends with the first answer that is not a halt. It is not persisted: a
// restart, usually after fixing the configuration, tries at once.
//
// Retryable: the same record is sent again, with no cap on attempts. A
// record that fails on its own waits its own exponential backoff with full
// jitter (uniform in [0, RetryInitial·2^(n-1)], at most RetryMax) while
// others keep flowing. After three failures in a row with no answer from
// upstream in between, upstream is taken to be down: all waiting records
// rejoin the queue in order and one probe at a time goes out, oldest record
// first, on the same backoff, until upstream answers; then full concurrency
// resumes. "Upstream is unreachable" and "reachable again" are logged once
// each. Each failed attempt is counted in the record's Attempts.
//
// # Rate
//
// No more than Rate requests per second leave (a token bucket of Burst; Rate
// 0 means no ceiling). Under that ceiling the rate adapts, AIMD: a 429 halves
// it (at most once per 100 ms and per round trip; never below 1/s), and
// successes while the limiter is what holds sending back raise it by a
// twentieth of the ceiling per second each second. The bucket's burst
// shrinks with the rate, to at most a second's worth. Instances that share
// an API key thus converge on what upstream allows, and on fair shares of
// it, without talking to each other. With Rate 0, adaptation starts at the
// first 429 from half the send rate observed over the last second.
//
// A Retry-After on a 429 or a 503, in delta-seconds or HTTP-date form,
// pauses the whole forwarder until that moment: no request leaves before it,
// including ones that had already passed the rate limiter (each worker checks
// the pause immediately before sending, and the worker that receives the
// answer sets the pause before reporting it). The moment is persisted in the
// spool's state under StateKeyPausedUntil, so a restart honours it too. A
// negative value is ignored and a value beyond RetryMax is cut to RetryMax;
// both are logged.
//
// # Delivery guarantee
//
// At least once. A record is deleted only after a 2xx; the deletes of
// delivered records are committed in batches, handed to the spool when a
// batch reaches a quarter of the window, after at most 5 ms, or at once when
// nothing is in flight. A crash between upstream's answer and that commit
// sends those records again after the restart. Deletes are not abandoned on
// a hard stop.
//
// Order: oldest first within each retry class. A record waiting for its own
// backoff is overtaken by newer ones; records held back by a pause, a halt or
// an outage keep their order.
//
// Records older than MaxAge are never sent: the spool's Read skips them, and
// the forwarder checks again when a record it holds is due to be sent (it
// may have aged while waiting); it leaves them to the spool, which drops and
// counts them. Stats.Expired counts those the forwarder skipped.
//
// # Shutdown
//
// Shutdown keeps sending while upstream accepts, until the spool is empty,
// its context ends, or upstream stops accepting (down, paused, halted, or a
// record waiting out a retry backoff: waiting would only hold the process
// up); then it cancels what is in flight, commits the deletes of
// what was delivered, and returns once every goroutine has. What is unsent
// stays in the spool. Cancelling Start's context is the same hard stop.
//
// # Bounds
//
// Memory does not grow with the spool: one dispatcher goroutine holds at
// most a window of records (16 per unit of Concurrency, between 256 and
// 4096), reading more after a cursor as they leave. Retried records stay in
// the window, so the cursor only moves forward; a restart reads from the
// start what is still queued.
//
// # Caveats
//
//   - The rate limiter and backoff clock is the process's; a pause persisted
//     across a restart is a wall-clock time, capped at RetryMax from the
//     restart.
//   - The adaptation finds a limit that upstream enforces with 429s. Before
//     the first 429 the configured ceiling holds; a ceiling far above the
//     real limit costs a burst of 429s at start.
//   - Stats.RateLimit is 0 when there is no limit (Rate 0 and no 429 yet).
package forwarder
