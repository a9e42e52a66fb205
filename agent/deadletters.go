package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/trackd/trackd/spool"
)

const (
	pathDeadLetters = "/dead-letters"
	pathRequeue     = "/dead-letters/requeue"

	deadLetterPage    = 100
	maxDeadLetterPage = 1000
)

// DeadLetterStore is what the dead-letter endpoints need of the spool.
type DeadLetterStore interface {
	ReadDead(after uint64, n int) ([]spool.DeadLetter, error)
	Requeue(ctx context.Context, ids ...uint64) error
}

// deadLetterView is one dead letter as GET /dead-letters shows it. The body
// is shown with its apiKey masked: the key is a secret and must not leave
// trackd through an operator's terminal or logs.
type deadLetterView struct {
	ID       uint64          `json:"id"`
	Kind     string          `json:"kind"`
	Status   int             `json:"status"`
	Reason   string          `json:"reason"`
	DeadAt   time.Time       `json:"dead_at"`
	Received time.Time       `json:"received"`
	Attempts uint32          `json:"attempts"`
	Body     json.RawMessage `json:"body"`
}

type deadLetterPageView struct {
	Status      string           `json:"status"`
	DeadLetters []deadLetterView `json:"dead_letters"`
	// NextAfter is the `after` to ask for the next page; 0 when this was the last.
	NextAfter uint64 `json:"next_after"`
}

// maskAPIKey returns body with the value of a top-level apiKey replaced by
// "***". A body that is not a JSON object is returned as a JSON string, so
// the answer stays valid JSON whatever was stored.
func maskAPIKey(body []byte) json.RawMessage {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		s, _ := json.Marshal(string(body))
		return s
	}
	if _, ok := obj["apiKey"]; ok {
		obj["apiKey"] = json.RawMessage(`"***"`)
	}
	out, err := json.Marshal(obj)
	if err != nil {
		s, _ := json.Marshal(string(body))
		return s
	}
	return out
}

func (a *api) serveDeadLetters(w http.ResponseWriter, r *http.Request) {
	if !allowGet(w, r) || !a.requireToken(w, r) {
		return
	}
	q := r.URL.Query()
	after, err := parseUintParam(q.Get("after"), 0)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, "`after` must be a record id (a whole number)")
		return
	}
	limit, err := parseUintParam(q.Get("limit"), deadLetterPage)
	if err != nil || limit == 0 || limit > maxDeadLetterPage {
		a.fail(w, r, http.StatusBadRequest, "`limit` must be a whole number from 1 to "+strconv.Itoa(maxDeadLetterPage))
		return
	}
	dls, err := a.dead.ReadDead(after, int(limit))
	if err != nil {
		a.unavailable(w, r, 1, "could not read the dead-letter store: "+err.Error())
		return
	}
	page := deadLetterPageView{Status: "success", DeadLetters: make([]deadLetterView, 0, len(dls))}
	for _, d := range dls {
		page.DeadLetters = append(page.DeadLetters, deadLetterView{
			ID: d.ID, Kind: d.Kind.String(), Status: d.Status, Reason: d.Reason, DeadAt: d.DeadAt.UTC(),
			Received: d.Received.UTC(), Attempts: d.Attempts, Body: maskAPIKey(d.Body),
		})
	}
	if len(dls) == int(limit) {
		page.NextAfter = dls[len(dls)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
}

// requeueRequest is the body of POST /dead-letters/requeue: either ids, or
// all to requeue the whole store.
type requeueRequest struct {
	IDs []uint64 `json:"ids"`
	All bool     `json:"all"`
}

func (a *api) serveRequeue(w http.ResponseWriter, r *http.Request) {
	if !a.allowPost(w, r) || !a.requireToken(w, r) {
		return
	}
	var req requeueRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || (len(req.IDs) == 0) == !req.All {
		a.fail(w, r, http.StatusBadRequest, `send {"ids":[1,2,...]} or {"all":true}`)
		return
	}
	n := len(req.IDs)
	if req.All {
		var err error
		if n, err = a.requeueAll(r.Context()); err != nil {
			a.unavailable(w, r, 1, "requeue stopped after "+strconv.Itoa(n)+" dead letters: "+err.Error())
			return
		}
	} else if err := a.dead.Requeue(r.Context(), req.IDs...); err != nil {
		a.unavailable(w, r, 1, "could not requeue: "+err.Error())
		return
	}
	a.log.Info("dead letters requeued by an operator", "count", n)
	writeJSON(w, http.StatusOK, map[string]any{"status": "success", "requeued": n})
}

// requeueAll moves every dead letter back to the queue, a page at a time so
// memory stays bounded however large the store is.
func (a *api) requeueAll(ctx context.Context) (int, error) {
	n := 0
	for {
		dls, err := a.dead.ReadDead(0, maxDeadLetterPage)
		if err != nil || len(dls) == 0 {
			return n, err
		}
		ids := make([]uint64, len(dls))
		for i, d := range dls {
			ids[i] = d.ID
		}
		if err := a.dead.Requeue(ctx, ids...); err != nil {
			return n, err
		}
		n += len(ids)
	}
}

// requireToken answers 401 and returns false when a token is configured and
// the request does not carry it.
func (a *api) requireToken(w http.ResponseWriter, r *http.Request) bool {
	if a.authorized(r) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="trackd"`)
	a.fail(w, r, http.StatusUnauthorized, "missing or wrong bearer token; send \"Authorization: Bearer <listen.auth_token>\"")
	return false
}

func parseUintParam(s string, def uint64) (uint64, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errors.New("not a whole number")
	}
	return n, nil
}
