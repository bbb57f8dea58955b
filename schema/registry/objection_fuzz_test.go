package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/schema"
)

// objectionWriterReordered is a writer schema of ObjectionState with its
// fields in another order and one more: it takes the registry's slow path
// (resolution to the bundled schema).
const objectionWriterReordered = `{"type":"record","name":"ObjectionState","namespace":"hygiene.v1","fields":[
{"name":"systems","type":{"type":"array","items":"string"}},
{"name":"extra","type":["null","string"],"default":null},
{"name":"effective_at","type":{"type":"long","logicalType":"timestamp-millis"}},
{"name":"request_id","type":"string"},
{"name":"subject_id","type":"string"}]}`

// FuzzObjection: any bytes, bare or framed with the bundled or a reordered
// writer schema, decode in bounded time to a state or a decode error; an
// accepted bare state re-encodes to one that decodes equal.
func FuzzObjection(f *testing.F) {
	fw := newFuzzWorld(f)
	valid, _ := schema.MarshalObjectionState(&schema.ObjectionState{SubjectID: "cust-42", RequestID: "o-1",
		EffectiveAt: time.UnixMilli(1_760_000_000_000).UTC(), Systems: []string{"meta", "*"}})
	empty, _ := schema.MarshalObjectionState(&schema.ObjectionState{SubjectID: "c", RequestID: "o", EffectiveAt: time.UnixMilli(0).UTC()})
	f.Add(byte(0), valid)
	f.Add(byte(0), empty)
	f.Add(byte(1), valid)
	f.Add(byte(2), []byte{4, 2, 'm', 0, 0, 2, 'o', 2, 'c'})
	f.Add(byte(0), []byte{2, 'c', 2, 'o', 0, 0xfe, 0xff, 0xff, 0xff, 0x0f})
	f.Add(byte(0), []byte{2, 'c', 2, 'o', 0, 1, 0})
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		// Bare.
		s, err := bounded(t, func() (*schema.ObjectionState, error) { return schema.BareWire{}.Objection(context.Background(), data) })
		if err != nil {
			wantClass(t, err, schema.ClassDecode)
		} else {
			again, err := schema.MarshalObjectionState(s)
			if err != nil {
				t.Fatalf("accepted state does not encode: %v", err)
			}
			back, err := schema.UnmarshalObjectionState(again)
			if err != nil || !reflect.DeepEqual(back, s) {
				t.Fatalf("accepted state does not round-trip: %+v, %+v, %v", s, back, err)
			}
		}
		// Registry.
		text := schema.ObjectionStateJSON()
		if mode&1 == 1 {
			text = objectionWriterReordered
		}
		got, err := bounded(t, func() (*schema.ObjectionState, error) {
			return fw.w.wire.Objection(context.Background(), frame(fw.id(text), data))
		})
		switch {
		case err != nil:
			wantClass(t, err, schema.ClassDecode)
		case mode&1 == 0 && s == nil:
			t.Fatalf("registry accepted a bundled-schema body that bare decoding refuses")
		case mode&1 == 0:
			gj, _ := json.Marshal(got)
			sj, _ := json.Marshal(s)
			if !bytes.Equal(gj, sj) {
				t.Fatalf("registry and bare decode differ: %s, %s", gj, sj)
			}
		}
	})
}
