package hubtest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// The cluster serves every slot, split evenly in order, and writes go to the
// slot's owner.
func TestRedisClusterServesEverySlot(t *testing.T) {
	addrs := RedisCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs[:1]})
	defer c.Close()
	ctx := context.Background()
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	covered := 0
	for _, s := range slots {
		covered += int(s.End - s.Start + 1)
		i := 0
		for int(s.Start) > (i+1)*16384/3-1 {
			i++
		}
		if got, want := s.Nodes[0].Addr, addrs[i]; got != want || int(s.End) != (i+1)*16384/3-1 {
			t.Errorf("slots %d-%d: got primary %s, want %s", s.Start, s.End, got, want)
		}
	}
	if covered != 16384 {
		t.Errorf("got %d slots served, want 16384", covered)
	}
	for _, k := range []string{"{a}", "{b}", "{c}", "x"} {
		if err := c.Set(ctx, k, 1, 0).Err(); err != nil {
			t.Errorf("SET %s: %v", k, err)
		}
	}
}
