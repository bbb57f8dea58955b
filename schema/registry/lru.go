package registry

import (
	"container/list"
	"time"
)

// expiringLRU maps IDs to expiry times, holding at most max of them: adding
// one more drops the least recently used. It is not safe for concurrent
// use.
type expiringLRU struct {
	max   int
	order *list.List // of *lruEntry, most recently used first
	byID  map[int]*list.Element
}

type lruEntry struct {
	id    int
	until time.Time
}

func newExpiringLRU(max int) *expiringLRU {
	return &expiringLRU{max: max, order: list.New(), byID: map[int]*list.Element{}}
}

// live reports whether id is held and not expired at now, and marks it
// used; an expired entry is dropped.
func (c *expiringLRU) live(id int, now time.Time) bool {
	el, ok := c.byID[id]
	if !ok {
		return false
	}
	if !now.Before(el.Value.(*lruEntry).until) {
		c.order.Remove(el)
		delete(c.byID, id)
		return false
	}
	c.order.MoveToFront(el)
	return true
}

// put holds id until until, dropping the least recently used entry if the
// cache is full.
func (c *expiringLRU) put(id int, until time.Time) {
	if el, ok := c.byID[id]; ok {
		el.Value.(*lruEntry).until = until
		c.order.MoveToFront(el)
		return
	}
	if c.order.Len() >= c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.byID, old.Value.(*lruEntry).id)
	}
	c.byID[id] = c.order.PushFront(&lruEntry{id: id, until: until})
}

// len returns how many IDs it holds.
func (c *expiringLRU) len() int { return c.order.Len() }
