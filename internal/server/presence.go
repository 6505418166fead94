package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/hubcluster/hubcluster/internal/hub"
	"github.com/hubcluster/hubcluster/internal/pubsub"
	"github.com/hubcluster/hubcluster/internal/wire"
)

// presenceHub is what the presence and operators' endpoints need of the hub.
type presenceHub interface {
	PresenceOf(ctx context.Context, room string) (int, []pubsub.Member, error)
	Nodes(ctx context.Context) ([]pubsub.NodeInfo, error)
	RoomsPage(ctx context.Context, after string, limit int) ([]pubsub.RoomCount, error)
	SendCommand(ctx context.Context, cmd pubsub.Command) error
}

var _ presenceHub = (*hub.Hub)(nil)

// Bounds of the operators' API.
const (
	defaultRoomsPage = 100
	maxRoomsPage     = 1000
	maxCloseReason   = 120 // a close frame's reason is at most 123 bytes
)

func (s *Server) routePresence() {
	s.mux.HandleFunc("GET /v1/presence", s.api(s.servePresence))
	s.mux.HandleFunc("GET /v1/nodes", s.api(s.serveNodes))
	s.mux.HandleFunc("GET /v1/rooms", s.api(s.serveRooms))
	s.mux.HandleFunc("POST /v1/disconnect", s.api(s.serveDisconnect))
	s.mux.HandleFunc("POST /v1/unsubscribe", s.api(s.serveUnsubscribe))
}

// api wraps an operators' endpoint: the bearer key when one is set, and a
// hub that serves presence.
func (s *Server) api(next func(w http.ResponseWriter, r *http.Request, h presenceHub)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.keyOK(w, r) {
			return
		}
		h, ok := s.hub.(presenceHub)
		if !ok {
			writeError(w, http.StatusNotFound, "no_presence", "this node serves no presence")
			return
		}
		next(w, r, h)
	}
}

// unavailable answers a presence read or command the broker did not take.
func (s *Server) unavailable(w http.ResponseWriter, what string, err error) {
	if errors.Is(err, hub.ErrNoPresence) {
		writeError(w, http.StatusNotFound, "no_presence", "this node serves no presence")
		return
	}
	s.logs.presenceFailed.Log("what", what, "err", err)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, wire.CodeUnavailable, what+" could not be read or sent; retry")
}

func (s *Server) servePresence(w http.ResponseWriter, r *http.Request, h presenceHub) {
	room := r.URL.Query().Get("room")
	if err := wire.ValidateRoom(room); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeBadRoom, err.Error())
		return
	}
	count, members, err := h.PresenceOf(r.Context(), room)
	if err != nil {
		s.unavailable(w, "presence", err)
		return
	}
	if members == nil {
		members = []pubsub.Member{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"room": room, "count": count, "members": members})
}

func (s *Server) serveNodes(w http.ResponseWriter, r *http.Request, h presenceHub) {
	nodes, err := h.Nodes(r.Context())
	if err != nil {
		s.unavailable(w, "the cluster view", err)
		return
	}
	if nodes == nil {
		nodes = []pubsub.NodeInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"nodes": nodes})
}

func (s *Server) serveRooms(w http.ResponseWriter, r *http.Request, h presenceHub) {
	q := r.URL.Query()
	limit := defaultRoomsPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxRoomsPage {
			writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "limit must be a whole number from 1 to 1000")
			return
		}
		limit = n
	}
	cursor := q.Get("cursor")
	if cursor != "" {
		if err := wire.ValidateRoom(cursor); err != nil {
			writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "cursor must be the next value of a previous page")
			return
		}
	}
	// One more than the page tells whether another page follows.
	rooms, err := h.RoomsPage(r.Context(), cursor, limit+1)
	if err != nil {
		s.unavailable(w, "the rooms", err)
		return
	}
	next := ""
	if len(rooms) > limit {
		rooms = rooms[:limit]
		next = rooms[len(rooms)-1].Room
	}
	if rooms == nil {
		rooms = []pubsub.RoomCount{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"rooms": rooms, "next": next})
}

// commandBody reads an operators' command body: JSON, within a small bound,
// with exactly the fields named.
func commandBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if !isJSON(r.Header) {
		writeError(w, http.StatusUnsupportedMediaType, wire.CodeBadRequest, "Content-Type must be application/json")
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "the body is larger than 4096 bytes or could not be read")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil || dec.More() {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "the body must be one JSON object with the documented fields")
		return false
	}
	return true
}

func (s *Server) serveDisconnect(w http.ResponseWriter, r *http.Request, h presenceHub) {
	var body struct {
		User   string  `json:"user"`
		Code   *int    `json:"code"`
		Reason *string `json:"reason"`
	}
	if !commandBody(w, r, &body) {
		return
	}
	if body.User == "" {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "user is required")
		return
	}
	code := 1008
	if body.Code != nil {
		code = *body.Code
	}
	if code != 1000 && code != 1008 && (code < 4100 || code > 4999) {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "code must be 1000, 1008 or 4100-4999")
		return
	}
	reason := "disconnected by the operator"
	if body.Reason != nil {
		reason = *body.Reason
	}
	if len(reason) > maxCloseReason || !utf8.ValidString(reason) {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "reason must be UTF-8 text of at most 120 bytes")
		return
	}
	if err := h.SendCommand(r.Context(), pubsub.Command{Op: "disconnect", User: body.User, Code: code, Reason: reason}); err != nil {
		s.unavailable(w, "the command", err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

func (s *Server) serveUnsubscribe(w http.ResponseWriter, r *http.Request, h presenceHub) {
	var body struct {
		User string `json:"user"`
		Room string `json:"room"`
	}
	if !commandBody(w, r, &body) {
		return
	}
	if body.User == "" {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, "user is required")
		return
	}
	if err := wire.ValidateRoom(body.Room); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeBadRoom, err.Error())
		return
	}
	if err := h.SendCommand(r.Context(), pubsub.Command{Op: "unsubscribe", User: body.User, Room: body.Room}); err != nil {
		s.unavailable(w, "the command", err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}
