package pubsub

import (
	"encoding/json"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Presence, cluster-wide: who is in which room, who joined and left, which
// nodes are alive, and operators' commands to every node. Both brokers keep
// it: Memory in the node, Redis under each room's hash tag, with one
// heartbeat key per node.
//
// A node tells its broker what its own connections do (Join, Leave) and
// whether it has members that want the room's events (Watch, Unwatch); none
// of these block, and each is carried out in the background, in order for
// one room and client. The broker publishes a join or leave event only
// while some node watches the room, so presence that nobody listens to costs
// one write per join and per leave. Events travel on the room's channel and
// take no offset.
//
// With Redis, every node heartbeats each second; when a node's heartbeat is
// older than NodeTimeout, one live node (whichever claims it first) removes
// its entries and publishes their leaves. A node whose own entries were
// removed while it was cut off, or lost with Redis's data, announces them
// again.

// Member is one connection's entry in a room's presence.
type Member struct {
	Client string `json:"client"`
	User   string `json:"user"`
	Node   string `json:"node"`
}

// PresenceEvent is a batch of joins or leaves of one room.
type PresenceEvent struct {
	Room    string
	Leave   bool // leaves; else joins
	Members []Member
}

// Command is an operator's order to every node of the cluster.
type Command struct {
	// Op is "disconnect" (close every connection of User with Code and
	// Reason) or "unsubscribe" (take User out of Room).
	Op     string `json:"op"`
	User   string `json:"user"`
	Room   string `json:"room,omitempty"`
	Code   int    `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// NodeInfo is what a node's heartbeat carries.
type NodeInfo struct {
	ID          string    `json:"id"`
	Address     string    `json:"address"`
	Version     string    `json:"version"`
	Connections int       `json:"connections"`
	Rooms       int       `json:"rooms"`
	Ready       bool      `json:"ready"`
	Started     time.Time `json:"started"`
}

// RoomCount is a room with members somewhere in the cluster.
type RoomCount struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
}

// PresenceSink receives what presence brings in from the cluster. A Sink
// passed to Run that also implements PresenceSink gets these calls from the
// broker's goroutines; they must not block.
type PresenceSink interface {
	// Presence hands over joins or leaves of a room this node is subscribed to.
	Presence(e PresenceEvent)
	// Command hands over an operator's command (from any node, this one too).
	Command(c Command)
}

// controlRoom is the reserved room whose channel carries operators'
// commands to every node; '!' is never in a room name.
const controlRoom = "!control"

// Payload prefixes on a room's channel, beside 'o' and 'h' (messages).
const (
	payloadPresence = 'p'
	payloadCommand  = 'c'
)

// presenceWire is a presence event as a room's channel carries it.
type presenceWire struct {
	Kind    string      `json:"k"` // "j" or "l"
	Node    string      `json:"n"`
	Members [][2]string `json:"m"` // client, user
}

// parseEvent reads a presence event's payload (after its prefix).
func parseEvent(room, payload string) (PresenceEvent, bool) {
	var w presenceWire
	if err := json.Unmarshal([]byte(payload), &w); err != nil || (w.Kind != "j" && w.Kind != "l") {
		return PresenceEvent{}, false
	}
	e := PresenceEvent{Room: room, Leave: w.Kind == "l", Members: make([]Member, len(w.Members))}
	for i, m := range w.Members {
		e.Members[i] = Member{Client: m[0], User: m[1], Node: w.Node}
	}
	return e, true
}

// clusterView keeps the live nodes as last seen, for the hub_cluster_nodes
// metric, and the information this node's heartbeat carries.
type clusterView struct {
	info func() NodeInfo

	mu    sync.Mutex
	nodes []NodeInfo
}

func newClusterView(info func() NodeInfo, reg prometheus.Registerer) (*clusterView, error) {
	if info == nil {
		info = func() NodeInfo { return NodeInfo{} }
	}
	v := &clusterView{info: info}
	if reg != nil {
		if err := reg.Register(v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func (v *clusterView) set(nodes []NodeInfo) {
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	v.mu.Lock()
	v.nodes = nodes
	v.mu.Unlock()
}

func (v *clusterView) get() []NodeInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]NodeInfo(nil), v.nodes...)
}

var clusterNodesDesc = prometheus.NewDesc("hub_cluster_nodes",
	"The live nodes of the cluster as this node last saw their heartbeats (one series each; the value is its connections).",
	[]string{"node", "address", "version", "ready"}, nil)

var clusterRoomsDesc = prometheus.NewDesc("hub_cluster_node_rooms",
	"Rooms with local members on each live node, as its heartbeat last said.",
	[]string{"node"}, nil)

func (v *clusterView) Describe(ch chan<- *prometheus.Desc) {
	ch <- clusterNodesDesc
	ch <- clusterRoomsDesc
}

func (v *clusterView) Collect(ch chan<- prometheus.Metric) {
	for _, n := range v.get() {
		ready := "false"
		if n.Ready {
			ready = "true"
		}
		ch <- prometheus.MustNewConstMetric(clusterNodesDesc, prometheus.GaugeValue, float64(n.Connections), n.ID, n.Address, n.Version, ready)
		ch <- prometheus.MustNewConstMetric(clusterRoomsDesc, prometheus.GaugeValue, float64(n.Rooms), n.ID)
	}
}

// pageRooms returns the rooms of counts after the room after, sorted by
// name, at most limit.
func pageRooms(counts map[string]int, after string, limit int) []RoomCount {
	names := make([]string, 0, len(counts))
	for name, n := range counts {
		if name > after && n > 0 {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) > limit {
		names = names[:limit]
	}
	out := make([]RoomCount, len(names))
	for i, name := range names {
		out[i] = RoomCount{Room: name, Members: counts[name]}
	}
	return out
}
