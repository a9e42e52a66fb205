// Package reliability is trackd's proof under fire: tests that run the real
// trackd binary as a subprocess against the loopback upstream of
// forwarder/upstreamtest, break things on purpose (SIGKILL, a file system
// that refuses writes, damaged spool files, a full spool, a misbehaving
// upstream, SIGTERM under load, hostile clients) and then audit what
// happened to every event.
//
// The package holds no code of its own: everything is in its tests. Run it
// with
//
//	make test-reliability
//	# which is
//	go test -race -tags reliability -count=1 -timeout 10m ./test/reliability/ -args -profile=short
//
// and the soak on demand with
//
//	go test -race -tags reliability -count=1 -timeout 0 -v -run 'TestSoak' ./test/reliability/ -args -profile=long -soak=10m
//
// The tests build only with the reliability tag, so `go test ./...` (make
// test) leaves them out; make test vets them with the tag.
//
// # The audit
//
// Every client request carries a unique "id" member in its JSON body and is
// written into a ledger with trackd's answer: acknowledged (200), refused
// (any other status; trackd promised nothing), not sent (the connection was
// refused, so no byte reached trackd) or unknown (the connection broke
// after the request was sent). Every fault test ends with the same audit,
// once trackd has stopped:
//
//   - each acknowledged event was received by upstream at least once, or is
//     in the dead-letter store with a reason (a few tests also allow it to
//     be still queued, or dropped by a configured policy);
//   - no refused or unsent event was delivered, dead-lettered or is queued;
//   - every body upstream received is the one the client sent (plus the
//     timestamp and apiKey trackd fills in), byte for byte where it matters;
//   - duplicates (at-least-once delivery) are counted and reported.
//
// # Flags (after -args)
//
//	-profile short|long    short: CI-sized (about 95 s on 2 cores); long: 100
//	                       crashes, 10 SIGTERMs, 40 bit-flip trials, the
//	                       30 s slow-body check and the full soak
//	-soak DURATION         the long profile's soak fill, default 10m
//	-soak.rate N           events per second offered during the soak
//	                       (default 1000)
//	-report FILE           append the measured figures as Markdown
//	-keep                  keep work directories (spools, logs) of failed tests
//	-trackd.race           build trackd with -race (memory figures are then
//	                       meaningless)
//
// trackd is built once per run without -race, as shipped: RssAnon is
// measured on it. The tests themselves run with -race.
package reliability
