package embedded

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestUpgradeFromLayout1 opens a file as layout 1 left it (9-byte forget
// results, no history, no creation times): every earlier forget request is
// then listed by ForgetLog (without request ID or subject), idempotency
// still holds, and the file is at the current layout.
func TestUpgradeFromLayout1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := Open(path, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "a", RequestedAt: at}})
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite the file into layout 1.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		results := tx.Bucket(bucketResults)
		if err := results.ForEach(func(k, v []byte) error { return results.Put(k, append([]byte(nil), v[:resultHead]...)) }); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketHistory, bucketCreated, bucketRetained} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(metaVersion, putUint(1))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, kr)
	if err != nil {
		t.Fatalf("open a layout 1 file: %v", err)
	}
	defer s.Close()
	var got []store.ForgetRecord
	if err := s.ForgetLog(ctx, time.Time{}, func(r store.ForgetRecord) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Status != store.Forgotten || !got[0].CompletedAt.Equal(res[0].CompletedAt) || got[0].RequestID != "" {
		t.Errorf("ForgetLog after upgrade: %+v", got)
	}
	again, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "a", RequestedAt: at}})
	if err != nil || again[0].Status != res[0].Status || !again[0].CompletedAt.Equal(res[0].CompletedAt) || again[0].Key != nil {
		t.Errorf("repeated request after upgrade: %+v, %v; want %+v", again, err, res[0])
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := getUint(tx.Bucket(bucketMeta).Get(metaVersion)); v != schemaVersion {
			t.Errorf("layout version %d after upgrade, want %d", v, schemaVersion)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeFromLayout2 opens a file as layout 2 left it (no retained
// keys): it is upgraded to the current layout, and a forget that retains
// its key works and keeps the key until it is settled.
func TestUpgradeFromLayout2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := Open(path, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}, {SubjectID: "b", Latest: at}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "a", RequestedAt: at}}); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketRetained); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(metaVersion, putUint(2))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, kr)
	if err != nil {
		t.Fatalf("open a layout 2 file: %v", err)
	}
	defer s.Close()
	req := store.ForgetRequest{RequestID: "r2", SubjectID: "b", RequestedAt: at, Retain: true, Partition: 1, Offset: 7}
	for range 2 {
		res, err := s.Forget(ctx, []store.ForgetRequest{req})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Status != store.Forgotten || !bytes.Equal(res[0].Key, e[1].Key) {
			t.Fatalf("retaining forget after upgrade: status %v, key returned %v", res[0].Status, res[0].Key != nil)
		}
	}
	if n, err := s.SettleCommitted(ctx, map[int32]int64{1: 8}); err != nil || n != 0 {
		t.Fatalf("SettleCommitted after upgrade: %d retained, %v", n, err)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := getUint(tx.Bucket(bucketMeta).Get(metaVersion)); v != schemaVersion {
			t.Errorf("layout version %d after upgrade, want %d", v, schemaVersion)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeFromLayout3 opens a file as layout 3 left it (no objection
// buckets): layout 4 adds them, keys are kept, and objections work.
func TestUpgradeFromLayout3(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := Open(path, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketObjections, bucketObjectionLog, bucketObjectionHistory} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(metaVersion, putUint(3))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, kr)
	if err != nil {
		t.Fatalf("open a layout 3 file: %v", err)
	}
	defer s.Close()
	got, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil || !bytes.Equal(got[0].Key, e[0].Key) || got[0].Objection != nil {
		t.Fatalf("Resolve after upgrade: same key %v, objection %+v, %v", err == nil && bytes.Equal(got[0].Key, e[0].Key), got[0].Objection, err)
	}
	res, err := s.Object(ctx, []store.ObjectionRequest{{RequestID: "o1", SubjectID: "a", EffectiveAt: at, Systems: []string{"meta"}}})
	if err != nil || res[0].Status != store.ObjectionApplied {
		t.Fatalf("Object after upgrade: %+v, %v", res, err)
	}
	got, err = s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil || !got[0].Objection.Objects("meta", at) || got[0].Objection.Objects("crm", at) {
		t.Fatalf("Resolve after an objection: %+v, %v", got[0].Objection, err)
	}
}
