package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// load is one measurement: connections that join rooms, and publishes at a
// fixed open-loop rate. Member i is in room i%Rooms and connects to target
// (i%Rooms + i/Rooms) % len(Targets): a room's members alternate between
// targets. Publishers are extra connections, spread over the targets
// the same way (publisher j publishes to room j%Rooms), or, with
// MembersPublish, the first member of every room.
type load struct {
	Targets        []string      `json:"targets"` // host:port
	Members        int           `json:"members"`
	Rooms          int           `json:"rooms"`
	Publishers     int           `json:"publishers"`
	MembersPublish bool          `json:"members_publish"`
	Rate           float64       `json:"rate"` // publishes per second, all publishers together
	Duration       time.Duration `json:"duration"`
	Payload        int           `json:"payload"`
	Prefix         string        `json:"prefix"`
	SourceIPs      []string      `json:"source_ips"`
	Token          string        `json:"token"`
	// Lo and Hi select the members a worker process handles; publishers go
	// with the member range that holds index 0 unless MembersPublish.
	Lo int `json:"lo"`
	Hi int `json:"hi"`
	// Hold keeps the connections open until the server closes them (a drain),
	// instead of publishing.
	Hold bool `json:"hold"`
	// RoomsPerMember, when above 1, makes every member join that many rooms,
	// spread pseudo-randomly (so rooms have different sizes), and connect to
	// target i%len(Targets); publishers are then the first Publishers members,
	// each publishing to its rooms in turn.
	RoomsPerMember int `json:"rooms_per_member"`
	// Churn is the share of memberships that leave and join again every
	// second while publishing (0.05: 5% a second).
	Churn float64 `json:"churn"`
}

// multi reports whether members join several rooms.
func (l *load) multi() bool { return l.RoomsPerMember > 1 }

// memberRooms returns the rooms member i joins.
func (l *load) memberRooms(i int) []int {
	if !l.multi() {
		return []int{i % l.Rooms}
	}
	rooms := make([]int, 0, l.RoomsPerMember)
	for j := 0; len(rooms) < l.RoomsPerMember && j < 4*l.RoomsPerMember; j++ {
		h := uint64(i)*0x9E3779B97F4A7C15 ^ uint64(j+1)*0xC2B2AE3D27D4EB4F
		h ^= h >> 29
		h *= 0xBF58476D1CE4E5B9
		h ^= h >> 32
		r := int(h % uint64(l.Rooms))
		if !slices.Contains(rooms, r) {
			rooms = append(rooms, r)
		}
	}
	return rooms
}

// result is what a load (or a worker's part of it) measured.
type result struct {
	Connected   int           `json:"connected"`
	ConnectErrs int           `json:"connect_errors"`
	Sent        map[int]int64 `json:"sent"`        // per room
	Received    int64         `json:"received"`    // message objects
	Errors      int64         `json:"errors"`      // error replies (rate_limited, forbidden, ...)
	WriteFails  int64         `json:"write_fails"` // publishes that could not be written
	Duplicates  int64         `json:"duplicates"`
	Reordered   int64         `json:"reordered"`
	Latency     *hist         `json:"latency"`
	Elapsed     time.Duration `json:"elapsed"`
	Closes      map[int]int   `json:"closes"` // close code -> count (Hold)
	CloseSpan   time.Duration `json:"close_span"`
	Hints       []int64       `json:"hints,omitempty"`
}

func newResult() *result {
	return &result{Sent: map[int]int64{}, Latency: newHist(), Closes: map[int]int{}}
}

func (r *result) merge(o *result) {
	r.Connected += o.Connected
	r.ConnectErrs += o.ConnectErrs
	for k, v := range o.Sent {
		r.Sent[k] += v
	}
	r.Received += o.Received
	r.Errors += o.Errors
	r.WriteFails += o.WriteFails
	r.Duplicates += o.Duplicates
	r.Reordered += o.Reordered
	r.Latency.merge(o.Latency)
	r.Elapsed = max(r.Elapsed, o.Elapsed)
	for k, v := range o.Closes {
		r.Closes[k] += v
	}
	r.CloseSpan = max(r.CloseSpan, o.CloseSpan)
	r.Hints = append(r.Hints, o.Hints...)
}

// conn is one benchmark connection.
type conn struct {
	ws       *websocket.Conn
	idx      int // member index; publishers: -1 - publisher index
	room     int
	rooms    []int // with RoomsPerMember: the member's rooms
	nextRoom int   // the next of rooms to publish to
	acks     int   // acks still awaited before acked is closed
	mu       sync.Mutex
	last     map[int]int64 // publisher -> last sequence seen
	received int64
	errors   int64
	dups     int64
	reorder  int64
	lat      *hist
	acked    chan struct{}
	closed   time.Time
	code     int
	hint     int64
}

type dialer struct {
	clients []*http.Client
	next    atomic.Int64
}

func newDialer(sourceIPs []string) *dialer {
	d := &dialer{}
	if len(sourceIPs) == 0 {
		sourceIPs = []string{""}
	}
	for _, ip := range sourceIPs {
		nd := &net.Dialer{Timeout: 10 * time.Second}
		if ip != "" {
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
		}
		d.clients = append(d.clients, &http.Client{Transport: &http.Transport{DialContext: nd.DialContext, DisableKeepAlives: true}})
	}
	return d
}

func (d *dialer) dial(ctx context.Context, target, token string) (*websocket.Conn, error) {
	c := d.clients[int(d.next.Add(1))%len(d.clients)]
	url := "ws://" + target + "/ws"
	if token != "" {
		url += "?token=" + token
	}
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(-1)
	return ws, nil
}

func (l *load) roomName(r int) string { return l.Prefix + strconv.Itoa(r) }

// connect opens members [Lo, Hi) and, in the part that holds member 0, the
// publishers; each joins its room. Connections that fail are counted.
func (l *load) connect(ctx context.Context, res *result) (members, pubs []*conn) {
	d := newDialer(l.SourceIPs)
	type job struct {
		i      int
		target string
		room   int
		pub    bool
	}
	var jobs []job
	for i := l.Lo; i < l.Hi; i++ {
		target := l.Targets[(i%l.Rooms+i/l.Rooms)%len(l.Targets)]
		if l.multi() {
			target = l.Targets[i%len(l.Targets)]
		}
		jobs = append(jobs, job{i: i, target: target, room: i % l.Rooms})
	}
	if !l.MembersPublish && !l.multi() && l.Lo == 0 {
		for j := range l.Publishers {
			// A publisher sits on the target after its room's first member, so
			// publishes cross nodes when there are several.
			jobs = append(jobs, job{i: -1 - j, target: l.Targets[(j+1)%len(l.Targets)], room: j % l.Rooms, pub: true})
		}
	}
	out := make([]*conn, len(jobs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	var errs atomic.Int64
	for k, jb := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ws, err := d.dial(ctx, jb.target, l.Token)
			if err != nil {
				errs.Add(1)
				return
			}
			c := &conn{ws: ws, idx: jb.i, room: jb.room, last: map[int]int64{}, lat: newHist(), acked: make(chan struct{}), acks: 1}
			if !jb.pub {
				c.rooms = l.memberRooms(jb.i)
				c.acks = len(c.rooms)
			}
			go c.read()
			if !jb.pub {
				var frame []byte
				for k, r := range c.rooms {
					if k > 0 {
						frame = append(frame, '\n')
					}
					frame = fmt.Appendf(frame, `{"type":"subscribe","room":%q,"id":%d}`, l.roomName(r), k+1)
				}
				ws.Write(ctx, websocket.MessageText, frame)
				select {
				case <-c.acked:
				case <-time.After(30 * time.Second):
					errs.Add(1)
					ws.CloseNow()
					return
				}
			}
			out[k] = c
		})
	}
	wg.Wait()
	res.ConnectErrs = int(errs.Load())
	for k, c := range out {
		if c == nil {
			continue
		}
		res.Connected++
		if jobs[k].pub {
			pubs = append(pubs, c)
		} else {
			members = append(members, c)
		}
	}
	switch {
	case l.multi():
		for _, c := range members {
			if c.idx < l.Publishers {
				pubs = append(pubs, c)
			}
		}
	case l.MembersPublish:
		for _, c := range members {
			if c.idx < l.Rooms { // the first member of its room
				pubs = append(pubs, c)
			}
		}
	}
	return members, pubs
}

// read consumes what the server sends: acks, and messages whose data is
// {"p":publisher,"s":sequence,"t":scheduled send time in ns,...}.
func (c *conn) read() {
	ackSeen := false
	var buf bytes.Buffer
	for {
		_, r, err := c.ws.Reader(context.Background())
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		p := buf.Bytes()
		if err != nil {
			c.mu.Lock()
			c.closed = time.Now()
			c.code = int(websocket.CloseStatus(err))
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				var h struct {
					ReconnectAfterMS int64 `json:"reconnect_after_ms"`
				}
				if json.Unmarshal([]byte(ce.Reason), &h) == nil {
					c.hint = h.ReconnectAfterMS
				}
			}
			c.mu.Unlock()
			return
		}
		now := time.Now().UnixNano()
		for line := range bytes.SplitSeq(p, []byte("\n")) {
			if !ackSeen && bytes.Contains(line, []byte(`"type":"ack"`)) {
				if c.acks--; c.acks <= 0 {
					ackSeen = true
					close(c.acked)
				}
				continue
			}
			if bytes.HasPrefix(line, []byte(`{"type":"ack"`)) {
				continue // a churned subscribe's
			}
			if bytes.HasPrefix(line, []byte(`{"type":"error"`)) {
				c.mu.Lock()
				c.errors++
				c.mu.Unlock()
				continue
			}
			pub, ok1 := field(line, `"p":`)
			seq, ok2 := field(line, `"s":`)
			sent, ok3 := field(line, `"t":`)
			if !ok1 || !ok2 || !ok3 {
				continue
			}
			// Order is per publisher within a room: with several rooms per
			// member, key by both.
			key := int(pub)
			if len(c.rooms) > 1 {
				if room, ok := roomNumber(line); ok {
					key = key<<24 | room
				}
			}
			c.mu.Lock()
			c.received++
			last, seen := c.last[key]
			switch {
			case !seen || seq > last:
				c.last[key] = seq
			case seq == last:
				c.dups++
			default:
				c.reorder++
			}
			c.lat.add(time.Duration(now - sent))
			c.mu.Unlock()
		}
	}
}

// roomNumber reads the number at the end of a message's room name.
func roomNumber(line []byte) (int, bool) {
	i := bytes.Index(line, []byte(`"room":"`))
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(`"room":"`):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return 0, false
	}
	name := rest[:end]
	j := len(name)
	for j > 0 && name[j-1] >= '0' && name[j-1] <= '9' {
		j--
	}
	n, err := strconv.Atoi(string(name[j:]))
	return n, err == nil
}

func field(line []byte, key string) (int64, bool) {
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return 0, false
	}
	s := line[i+len(key):]
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	var v int64
	j := 0
	for ; j < len(s) && s[j] >= '0' && s[j] <= '9'; j++ {
		v = v*10 + int64(s[j]-'0')
	}
	if neg {
		v = -v
	}
	return v, j > 0
}

// publish sends at l.Rate for l.Duration, round robin over pubs, each message
// due at a fixed time (open loop: a late send is measured from when it was due,
// so stalls are not hidden).
func (l *load) publish(ctx context.Context, pubs []*conn, res *result) {
	if len(pubs) == 0 || l.Rate <= 0 {
		return
	}
	pad := strings.Repeat("x", max(0, l.Payload-60))
	interval := time.Duration(float64(time.Second) / l.Rate)
	seqs := make([]int64, len(pubs))
	start := time.Now()
	var buf []byte
	for k := 0; ; k++ {
		due := start.Add(time.Duration(k) * interval)
		if due.Sub(start) >= l.Duration || ctx.Err() != nil {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		j := k % len(pubs)
		c := pubs[j]
		seqs[j]++
		room := c.room
		if len(c.rooms) > 1 {
			room = c.rooms[c.nextRoom%len(c.rooms)]
			c.nextRoom++
		}
		buf = fmt.Appendf(buf[:0], `{"type":"publish","room":%q,"data":{"p":%d,"s":%d,"t":%d,"x":%q}}`,
			l.roomName(room), c.idx, seqs[j], due.UnixNano(), pad)
		if err := c.ws.Write(ctx, websocket.MessageText, buf); err != nil {
			res.WriteFails++
			continue
		}
		res.Sent[room]++
	}
}

// run carries out this process's part of l and returns what it measured.
// ready is called once every connection is up; it returns when to start.
func (l *load) run(ctx context.Context, ready func()) *result {
	res := newResult()
	members, pubs := l.connect(ctx, res)
	if ready != nil {
		ready()
	}
	start := time.Now()
	if l.Hold {
		var first, last time.Time
		for _, c := range members {
			for {
				c.mu.Lock()
				closed := c.closed
				c.mu.Unlock()
				if !closed.IsZero() {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		for _, c := range members {
			res.Closes[c.code]++
			res.Hints = append(res.Hints, c.hint)
			if first.IsZero() || c.closed.Before(first) {
				first = c.closed
			}
			if c.closed.After(last) {
				last = c.closed
			}
		}
		res.CloseSpan = last.Sub(first)
		res.Elapsed = time.Since(start)
		return res
	}
	stopChurn := make(chan struct{})
	churned := make(chan struct{})
	go func() { l.churn(members, stopChurn); close(churned) }()
	l.publish(ctx, pubs, res)
	close(stopChurn)
	<-churned
	res.Elapsed = time.Since(start)
	// Let what is in flight arrive: until nothing new comes for 500ms.
	var prev int64 = -1
	for {
		var n int64
		for _, c := range members {
			c.mu.Lock()
			n += c.received
			c.mu.Unlock()
		}
		if n == prev {
			break
		}
		prev = n
		time.Sleep(500 * time.Millisecond)
	}
	for _, c := range collect(res, members, pubs) {
		c.ws.Close(websocket.StatusNormalClosure, "")
	}
	return res
}

// collect adds what the connections counted to res, each connection once
// (with MembersPublish the publishers are members too), and returns them.
func collect(res *result, members, pubs []*conn) []*conn {
	seen := make(map[*conn]bool, len(members)+len(pubs))
	var all []*conn
	for _, group := range [][]*conn{members, pubs} {
		for _, c := range group {
			if seen[c] {
				continue
			}
			seen[c] = true
			all = append(all, c)
			c.mu.Lock()
			res.Errors += c.errors // error replies go to publishers too
			res.Received += c.received
			res.Duplicates += c.dups
			res.Reordered += c.reorder
			res.Latency.merge(c.lat)
			c.mu.Unlock()
		}
	}
	return all
}

// churn makes members leave one of their rooms and join it again, at
// l.Churn of the memberships a second, until stop is closed.
func (l *load) churn(members []*conn, stop <-chan struct{}) {
	var memberships int
	for _, c := range members {
		memberships += len(c.rooms)
	}
	perSec := l.Churn * float64(memberships)
	if perSec <= 0 || len(members) == 0 {
		return
	}
	interval := time.Duration(float64(time.Second) / perSec)
	tick := time.NewTicker(max(interval, time.Millisecond))
	defer tick.Stop()
	batch := max(1, int(float64(time.Millisecond)/float64(interval))) // several per tick when faster than 1/ms
	rng := rand.New(rand.NewPCG(uint64(l.Lo)+1, 7))
	ctx := context.Background()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		for range batch {
			c := members[rng.IntN(len(members))]
			if len(c.rooms) == 0 {
				continue
			}
			room := l.roomName(c.rooms[rng.IntN(len(c.rooms))])
			c.ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil,
				"{\"type\":\"unsubscribe\",\"room\":%q}\n{\"type\":\"subscribe\",\"room\":%q}", room, room))
		}
	}
}

// expected is how many deliveries a complete run makes: every message sent to
// a room reaches each of its members. With churn some are missed on purpose
// (a member between leave and join): the count is then an upper bound.
func (l *load) expected(sent map[int]int64) int64 {
	if l.multi() {
		size := make(map[int]int64)
		for i := range l.Members {
			for _, r := range l.memberRooms(i) {
				size[r]++
			}
		}
		var n int64
		for room, s := range sent {
			n += s * size[room]
		}
		return n
	}
	var n int64
	for room, s := range sent {
		members := int64(l.Members / l.Rooms)
		if room < l.Members%l.Rooms {
			members++
		}
		n += s * members
	}
	return n
}
