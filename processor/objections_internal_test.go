package processor

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestCacheObjections: the cache keeps a subject's objection next to its
// key, maps its systems to plan indices ("*": all), keeps it through a
// promotion, and drops it with the subject on a forget.
func TestCacheObjections(t *testing.T) {
	c := newSubjectCache(8, 3)
	c.systems = []string{"crm", "google-analytics", "meta"}
	at := time.UnixMilli(1_700_000_000_123)
	e := testEntry(1)
	e.Objection = &store.Objection{EffectiveAt: at, Systems: []string{"meta", "not-configured"}}
	s := c.put([]byte("a"), e)
	if _, ok := s.objection(at.UnixMilli() - 1); ok {
		t.Errorf("an event before effective_at is objected")
	}
	st, ok := s.objection(at.UnixMilli())
	if !ok || !slices.Equal(st.sys, []bool{false, false, true}) {
		t.Fatalf("objection at effective_at: %v %v, want meta only", st.sys, ok)
	}
	all := testEntry(2)
	all.Objection = &store.Objection{EffectiveAt: at, Systems: []string{store.AllSystems}}
	c.put([]byte("all"), all)
	withdrawn := testEntry(3)
	withdrawn.Objection = &store.Objection{EffectiveAt: at, Systems: []string{}}
	if _, ok := c.put([]byte("w"), withdrawn).objection(at.UnixMilli()); ok {
		t.Errorf("a withdrawn objection objects")
	}
	putDerived(c, "x", testEntry(4))
	putDerived(c, "y", testEntry(5)) // a, all, w, x are cold now
	s, hit := c.get([]byte("all"))
	if st, ok := s.objection(at.UnixMilli()); !hit || !ok || !slices.Equal(st.sys, []bool{true, true, true}) {
		t.Fatalf("the objection to all systems was lost in promotion: %v %v %v", hit, ok, st.sys)
	}
	c.forget(all.Hash)
	if _, hit := c.get([]byte("all")); hit {
		t.Fatalf("a forgotten subject is still cached")
	}
	if len(s.g.objs) != 0 && s.g.objs[s.i].sys != nil {
		t.Errorf("a forgotten subject's objection was not dropped")
	}
}

// TestObjected: the store-level question the lookup API asks.
func TestObjected(t *testing.T) {
	ks, err := embedded.Open(t.TempDir(), storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	ctx := context.Background()
	at := time.UnixMilli(1_700_000_000_000).UTC()
	if _, err := ks.Object(ctx, []store.ObjectionRequest{{RequestID: "o", SubjectID: "s", EffectiveAt: at, Systems: []string{"meta"}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		system string
		at     time.Time
		want   bool
	}{{"meta", at, true}, {"meta", at.Add(-time.Millisecond), false}, {"crm", at, false}} {
		got, err := Objected(ctx, ks, "s", tc.system, tc.at)
		if err != nil || got != tc.want {
			t.Errorf("Objected(s, %s, %v) = %v, %v; want %v", tc.system, tc.at, got, err, tc.want)
		}
	}
}
